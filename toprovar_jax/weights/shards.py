"""Shipped weights: npz-shard exports and the embedded assets (SPEC §8).

The emoji model's weights ship inside the package, under
`toprovar_jax/assets/<model>/`, in the export format that training writes
(`toprovar_jax.training.loop.export_params`, format
"toprovar-npz-shards-v1"):

  <name>.manifest.json   {"format", "name", "step", "max_bytes", "files",
                          "num_params", "metadata", "leaves": {
                            "<a/b/c>": {"shape": [...], "dtype": "bfloat16",
                                        "parts": [{"file", "entry", "rows"}]}}}
  <name>_NNN.npz         one array per part, under "<a/b/c>#<part>"; a leaf
                         too big for one file is split along its first axis.
                         bfloat16 is stored as its uint16 bit pattern (numpy
                         has no bfloat16).

This is the one reader of the format (training reads its own exports with
it too); it imports no training code, so that generation never imports
optax or the training loop. A test round-trips `loop.export_params` through
it. The files come
from outside (SPEC §11): the manifest is parsed as JSON data, the npz files
are opened with `allow_pickle=False`, and a file name in the manifest must
be a bare name in the export folder.

  load_shards     folder + name -> (nested dict of numpy arrays, manifest)
  check_shapes    a tree against the model's abstract tree (names bad leaves)
  load_params     both, cast to the model's dtypes
  embedded_dir    the packaged assets folder of a model
"""

from __future__ import annotations

import importlib.resources
import json
import os
import pathlib
import re
import zipfile
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import jax
import ml_dtypes
import numpy as np

from toprovar_jax.convert import common

PathLike = Union[str, os.PathLike]

EXPORT_FORMAT = "toprovar-npz-shards-v1"
# `config.ckpt.*` value that selects the packaged weights of a model.
EMBEDDED_PREFIX = "embedded:"
# Export names of the two parts of a model (training's `export_params`).
TRANSFORMER = "transformer"
TOKENIZER = "tokenizer"
# Issue 4: "shipped weights <= 30 MB in total"; every file the package
# ships for a model counts (shards, manifests, README). Decimal megabytes.
MAX_TOTAL_BYTES = 30 * 10**6
# Largest single file (the limit training's export already keeps).
MAX_FILE_BYTES = 16 * 2**20
# A shard is a bare file name in the export folder: nothing can point
# outside it ("../x.npz", "/etc/x.npz").
_FILE_RE = re.compile(r"^[A-Za-z0-9_.-]+\.npz$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# Storage dtypes a manifest may name (parsed by name, never evaluated).
_DTYPES = {
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    **{n: np.dtype(n) for n in ("float16", "float32", "float64", "int8",
                                "int16", "int32", "int64", "uint8", "uint16",
                                "uint32", "uint64", "bool")}}


class WeightsError(ValueError):
  """An export is malformed or does not fit the model; names the leaf/file."""


def manifest_path(directory: PathLike, name: str) -> pathlib.Path:
  """`<directory>/<name>.manifest.json`."""
  return pathlib.Path(directory) / f"{name}.manifest.json"


def is_export(directory: PathLike, name: str) -> bool:
  """Whether `directory` holds an npz-shard export called `name`."""
  return manifest_path(directory, name).is_file()


def embedded_dir(model_name: str) -> pathlib.Path:
  """Folder of the packaged weights of `model_name` (may not exist).

  Raises:
    WeightsError: `model_name` is not a plain name (it could climb out of
      the assets folder).
  """
  if not _NAME_RE.match(model_name):
    raise WeightsError(f"{model_name!r} is not an embedded-weights name")
  root = importlib.resources.files("toprovar_jax").joinpath("assets")
  return pathlib.Path(str(root)) / model_name


def embedded_names() -> Tuple[str, ...]:
  """Models with packaged weights (folders holding a transformer export)."""
  root = embedded_dir("_").parent
  if not root.is_dir():
    return ()
  return tuple(sorted(p.name for p in root.iterdir()
                      if is_export(p, TRANSFORMER)))


# --------------------------------------------------------------------------
# Reading.
# --------------------------------------------------------------------------


def read_manifest(directory: PathLike, name: str) -> Dict[str, Any]:
  """Reads and checks `<name>.manifest.json` (no array data).

  Returns:
    The manifest dict; every leaf has a list `shape` of ints, a known
    `dtype` and parts whose `file` is a bare `.npz` name.

  Raises:
    FileNotFoundError: no manifest (the message names the file).
    WeightsError: not JSON, another format, or a malformed leaf (named).
  """
  path = manifest_path(directory, name)
  if not path.is_file():
    raise FileNotFoundError(f"weights manifest {str(path)!r} does not exist")
  try:
    manifest = json.loads(path.read_text(encoding="utf-8"))
  except (ValueError, UnicodeDecodeError) as e:
    raise WeightsError(f"{path}: not a JSON manifest ({e})") from None
  if not isinstance(manifest, dict) or manifest.get(
      "format") != EXPORT_FORMAT:
    got = manifest.get("format") if isinstance(manifest, dict) else None
    raise WeightsError(f"{path}: format {got!r}, expected {EXPORT_FORMAT!r}")
  leaves = manifest.get("leaves")
  if not isinstance(leaves, dict) or not leaves:
    raise WeightsError(f"{path}: no 'leaves'")
  for key, leaf in leaves.items():
    what = f"{path}: leaf {key!r}"
    if not isinstance(leaf, dict):
      raise WeightsError(f"{what}: not an object")
    shape = leaf.get("shape")
    if not (isinstance(shape, list) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0
        for d in shape)):
      raise WeightsError(f"{what}: bad shape {shape!r}")
    if leaf.get("dtype") not in _DTYPES:
      raise WeightsError(f"{what}: unknown dtype {leaf.get('dtype')!r}")
    parts = leaf.get("parts")
    if not isinstance(parts, list) or not parts:
      raise WeightsError(f"{what}: no parts")
    for part in parts:
      if not (isinstance(part, dict) and isinstance(part.get("file"), str)
              and _FILE_RE.match(part["file"])
              and isinstance(part.get("entry"), str)):
        raise WeightsError(f"{what}: bad part {part!r} (need a bare .npz "
                           "file name and an entry)")
  return manifest


def _stored_dtype(leaf: Mapping[str, Any]) -> np.dtype:
  """What the npz holds for a leaf: uint16 for bfloat16 bit patterns."""
  want = _DTYPES[leaf["dtype"]]
  return np.dtype(np.uint16) if want == _DTYPES["bfloat16"] else want


def load_shards(directory: PathLike, name: str, *,
                dtype: Any = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """Reads an npz-shard export written by `training.loop.export_params`.

  Args:
    directory: the export folder.
    name: the export name (`transformer`, `tokenizer`, ...).
    dtype: cast floating leaves to this; None keeps the stored dtype
      (bfloat16 leaves come back as `ml_dtypes.bfloat16`).

  Returns:
    (tree, manifest): the nested dict of numpy arrays ("a/b/c" keys split on
    "/") and the manifest.

  Raises:
    FileNotFoundError: the manifest or a shard it lists is missing (named).
    WeightsError: a malformed manifest, a missing npz entry, or a part whose
      dtype or size does not match the manifest (the leaf is named).
  """
  directory = pathlib.Path(directory)
  manifest = read_manifest(directory, name)
  files: Dict[str, Any] = {}
  flat: Dict[str, np.ndarray] = {}
  try:
    for key, leaf in sorted(manifest["leaves"].items()):
      stored = _stored_dtype(leaf)
      parts = []
      for part in leaf["parts"]:
        fname = part["file"]
        if fname not in files:
          path = directory / fname
          if not path.is_file():
            raise FileNotFoundError(
                f"weights shard {str(path)!r} (leaf {key!r} of "
                f"{manifest_path(directory, name).name}) does not exist")
          try:
            files[fname] = np.load(path, allow_pickle=False)
          except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise WeightsError(f"{path}: not a readable npz ({e})") from None
        if part["entry"] not in files[fname]:
          raise WeightsError(f"{directory / fname}: no entry "
                             f"{part['entry']!r} for leaf {key!r}")
        arr = files[fname][part["entry"]]
        if arr.dtype != stored:
          raise WeightsError(f"leaf {key!r}: {fname} stores {arr.dtype}, "
                             f"the manifest says {leaf['dtype']}")
        parts.append(arr)
      try:
        arr = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
      except ValueError as e:
        raise WeightsError(f"leaf {key!r}: its parts do not stack ({e})"
                           ) from None
      if arr.size != int(np.prod(leaf["shape"], dtype=np.int64)):
        raise WeightsError(f"leaf {key!r}: {arr.size} values stored, the "
                           f"manifest shape {leaf['shape']} needs "
                           f"{int(np.prod(leaf['shape']))}")
      if stored != _DTYPES[leaf["dtype"]]:
        arr = arr.view(_DTYPES[leaf["dtype"]])
      arr = arr.reshape(leaf["shape"])
      if dtype is not None and _is_float(arr.dtype):
        arr = arr.astype(dtype)
      flat[key] = arr
  finally:
    for f in files.values():
      f.close()
  return _unflatten(flat), manifest


def _unflatten(flat: Mapping[str, Any]) -> Dict[str, Any]:
  tree: Dict[str, Any] = {}
  for key, value in flat.items():
    node = tree
    *path, last = key.split("/")
    for part in path:
      node = node.setdefault(part, {})
      if not isinstance(node, dict):
        raise WeightsError(f"leaf {key!r}: {part!r} is both a leaf and a "
                           "folder")
    node[last] = value
  return tree


# --------------------------------------------------------------------------
# Validation against the model.
# --------------------------------------------------------------------------


def _manifest_tree(manifest: Mapping[str, Any]) -> Dict[str, Any]:
  return _unflatten({k: jax.ShapeDtypeStruct(tuple(v["shape"]),
                                             _DTYPES[v["dtype"]])
                     for k, v in manifest["leaves"].items()})


def check_shapes(tree: Any, abstract: Any, *, context: str = "") -> None:
  """Checks a tree (arrays or ShapeDtypeStructs) against the model's.

  Args:
    tree: nested dict of the loaded (or manifest) leaves.
    abstract: the model's tree of `jax.ShapeDtypeStruct` (`jax.eval_shape`
      of its init).
    context: what is checked, for the message (e.g. the config field).

  Raises:
    ConversionError: missing, unexpected or mis-shaped leaves, all listed
      by name (a `ValueError`).
    WeightsError: a leaf whose dtype kind cannot become the model's (an
      integer leaf where the model has floats, or the reverse), named.
  """
  common.check_against(tree, abstract, context=context)
  got, want = common.flatten(tree), common.flatten(abstract)
  for key, spec in sorted(want.items()):
    have = np.dtype(got[key].dtype)
    need = np.dtype(spec.dtype)
    if _is_float(have) != _is_float(need):
      raise WeightsError(f"{context + ': ' if context else ''}leaf {key!r} "
                         f"is {have}, the model needs {need}")


def _is_float(dtype: np.dtype) -> bool:
  return (np.issubdtype(dtype, np.floating)
          or dtype == _DTYPES["bfloat16"])


def load_params(directory: PathLike, name: str, abstract: Any, *,
                context: str = "") -> Tuple[Any, Dict[str, Any]]:
  """Reads an export into the layout and dtypes of `abstract`.

  The manifest is checked against the model before any array is read, so a
  wrong export fails fast; the arrays are then checked again as read.

  Args:
    directory: export folder.
    name: export name.
    abstract: the model's ShapeDtypeStruct tree.
    context: for messages (e.g. "config.ckpt.transformer of emoji").

  Returns:
    (params, manifest): a tree of jax arrays in the model's dtypes, and the
    manifest (its "step" says how long the weights were trained).

  Raises:
    FileNotFoundError, WeightsError, ConversionError: see `load_shards` and
      `check_shapes`.
  """
  where = f"{context}: {directory}" if context else str(directory)
  manifest = read_manifest(directory, name)
  check_shapes(_manifest_tree(manifest), abstract, context=where)
  tree, _ = load_shards(directory, name)
  check_shapes(tree, abstract, context=where)
  return jax.tree.map(lambda a, s: jax.numpy.asarray(a, dtype=s.dtype),
                      tree, abstract), manifest


def export_files(directory: PathLike, name: str) -> Tuple[pathlib.Path, ...]:
  """The files of an export: its shards (sorted), then its manifest."""
  manifest = read_manifest(directory, name)
  shards = sorted({p["file"] for leaf in manifest["leaves"].values()
                   for p in leaf["parts"]})
  directory = pathlib.Path(directory)
  return tuple(directory / f for f in shards) + (
      manifest_path(directory, name),)


def check_sizes(paths, *, max_total: int = MAX_TOTAL_BYTES,
                max_file: int = MAX_FILE_BYTES) -> int:
  """Checks the shipping limits; returns the total size in bytes.

  Raises:
    FileNotFoundError: a path does not exist (named).
    WeightsError: a file over `max_file` (named) or a total over
      `max_total`.
  """
  total = 0
  for path in paths:
    size = pathlib.Path(path).stat().st_size
    if size > max_file:
      raise WeightsError(f"{path}: {size} bytes, over the {max_file}-byte "
                         "limit of one shipped file")
    total += size
  if total > max_total:
    raise WeightsError(f"{len(paths)} files total {total} bytes, over the "
                       f"{max_total}-byte limit of shipped weights")
  return total


def step_of(manifest: Optional[Mapping[str, Any]]) -> Optional[int]:
  """The training step a manifest records, or None."""
  step = (manifest or {}).get("step")
  return step if isinstance(step, int) and not isinstance(step, bool) else None
