"""Orbax save / restore of parameter trees (STYLE.md §8.5, §9.23).

The library reads only orbax (SPEC §1). A checkpoint is one local directory
written by `ocp.StandardCheckpointer`, holding one nested dict of arrays:

  transformer   `toprovar_jax.models.transformer.init_params` layout,
                {"stem": ..., "blocks": ... stacked over depth}
  tokenizer     the module's variables, {"params": ...} of `VQVAE` (VAR) or
                `BSQVAE` (Infinity)

Restoring is strict. The on-disk tree (read from the checkpoint's metadata,
no array data) is compared with the abstract tree of the model
(`jax.eval_shape` of its init) first, and any missing, unexpected or
mis-shaped leaf fails with a `ConversionError` that lists all of them. Only
then are the arrays read into that abstract tree, so they arrive in the
model's dtype. This check matters: orbax itself restores a mis-shaped leaf
without complaint.

Checkpoints come from outside and are untrusted (SPEC §11): orbax reads
arrays and JSON metadata only, nothing is unpickled.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Dict, Mapping, Union

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from toprovar_jax.weights import strict

PathLike = Union[str, os.PathLike]
ConversionError = strict.ConversionError


def checkpoint_path(path: PathLike) -> pathlib.Path:
  """A checkpoint location as orbax wants it: an absolute local path."""
  return pathlib.Path(path).expanduser().absolute()


def save_params(path: PathLike, tree: Any, *, overwrite: bool = False) -> str:
  """Saves a tree of arrays (numpy or jax) to a new orbax directory.

  Args:
    path: target directory; must not exist unless `overwrite`.
    tree: nested dict of arrays.
    overwrite: replace an existing checkpoint at `path`.

  Returns:
    The absolute path written.

  Raises:
    FileExistsError: `path` exists and `overwrite` is False.
  """
  target = checkpoint_path(path)
  if target.exists() and not overwrite:
    raise FileExistsError(f"checkpoint {str(target)!r} already exists; pass "
                          "overwrite=True to replace it")
  # Store jax arrays so that a restore gives jax arrays back (orbax records
  # numpy leaves as numpy and would restore them as numpy).
  tree = jax.tree.map(jax.numpy.asarray, tree)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(target, tree, force=overwrite)
    ckptr.wait_until_finished()
  return str(target)


def read_tree_shapes(path: PathLike) -> Dict[str, Any]:
  """The checkpoint's tree as `jax.ShapeDtypeStruct` leaves (no array data).

  Raises:
    FileNotFoundError: `path` is not an orbax checkpoint directory.
  """
  target = checkpoint_path(path)
  if not target.is_dir():
    raise FileNotFoundError(f"checkpoint {str(target)!r} does not exist or "
                            "is not a directory")
  with ocp.StandardCheckpointer() as ckptr:
    try:
      meta = ckptr.metadata(target)
    except (FileNotFoundError, ValueError) as e:
      raise FileNotFoundError(
          f"{str(target)!r} is not a readable orbax checkpoint: {e}") from None
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  if not isinstance(tree, Mapping):
    raise FileNotFoundError(f"{str(target)!r} holds no orbax tree metadata; "
                            "is it a checkpoint written by save_params?")
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype),
                      _to_dict(tree))


def _to_dict(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {k: _to_dict(v) for k, v in tree.items()}
  return tree


def restore_params(path: PathLike, abstract: Any, *, context: str = "") -> Any:
  """Restores a checkpoint into the layout of an abstract (eval_shape) tree.

  Args:
    path: orbax checkpoint directory (written by `save_params`).
    abstract: the model's tree of `jax.ShapeDtypeStruct` (e.g.
      `jax.eval_shape(init_fn, key)`); shapes and dtypes of the result.
    context: what is being restored, for error messages (e.g. the variant).

  Returns:
    The tree of jax arrays with the structure, shapes and dtypes of
    `abstract`.

  Raises:
    FileNotFoundError: no checkpoint at `path`.
    ConversionError: missing / unexpected / mis-shaped leaves, all listed.
  """
  target = checkpoint_path(path)
  on_disk = read_tree_shapes(target)
  what = f"{context}: {target}" if context else str(target)
  strict.check_against(on_disk, abstract, context=what)
  flat_disk = strict.flatten(on_disk)
  cast = sorted(k for k, want in strict.flatten(abstract).items()
                if np.dtype(flat_disk[k].dtype) != np.dtype(want.dtype))
  if cast:
    logging.warning("checkpoint %s: %d leaves are cast to the model dtype "
                    "(%s%s)", what, len(cast), ", ".join(cast[:5]),
                    ", ..." if len(cast) > 5 else "")
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(target, abstract)
