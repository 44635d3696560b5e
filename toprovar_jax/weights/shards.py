"""The npz-shard export format: its one writer and its one reader.

Training exports its parameters in this format, and the emoji model's
weights ship inside the package in it (`weights.embedded`); format
"toprovar-npz-shards-v1":

  <name>.manifest.json   {"format", "name", "step", "max_bytes", "files",
                          "num_params", "metadata", "leaves": {
                            "<a/b/c>": {"shape": [...], "dtype": "bfloat16",
                                        "parts": [{"file", "entry", "rows"}]}}}
  <name>_NNN.npz         one array per part, under "<a/b/c>#<part>"; a leaf
                         too big for one file is split along its first axis.
                         bfloat16 is stored as its uint16 bit pattern (numpy
                         has no bfloat16).

Writer and reader live together so that the format has one definition;
neither imports training code, so generation never imports optax or the
training loop. The files come from outside (SPEC §11): the manifest is
parsed as JSON data, the npz files are opened with `allow_pickle=False`, and
a file name in the manifest must be a bare name in the export folder.

  write_shards    nested dict of arrays -> shards + manifest (atomic files)
  load_shards     folder + name -> (nested dict of numpy arrays, manifest)
  check_shapes    a tree against the model's abstract tree (names bad leaves)
  load_params     both, cast to the model's dtypes
  export_files    the files of an export (to copy or ship them)
"""

from __future__ import annotations

import io as pyio
import json
import os
import pathlib
import re
import zipfile
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import flax.traverse_util
import jax
import ml_dtypes
import numpy as np

from toprovar_jax import io
from toprovar_jax.weights import strict

PathLike = Union[str, os.PathLike]

EXPORT_FORMAT = "toprovar-npz-shards-v1"
# Largest single file (a git-friendly shard; also the shipping limit of one
# file, `weights.embedded`).
MAX_FILE_BYTES = 16 * 2**20
# Room for the .npy headers and zip directory of one shard, per array.
_NPZ_OVERHEAD_PER_ARRAY = 512
# Export names of the two parts of a model (training's exports).
TRANSFORMER = "transformer"
TOKENIZER = "tokenizer"
# A shard is a bare file name in the export folder: nothing can point
# outside it ("../x.npz", "/etc/x.npz").
_FILE_RE = re.compile(r"^[A-Za-z0-9_.-]+\.npz$")
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


# --------------------------------------------------------------------------
# Writing.
# --------------------------------------------------------------------------


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
  buf = pyio.BytesIO()
  np.savez(buf, **arrays)
  return buf.getvalue()


def write_shards(directory: PathLike, tree: Any, *, name: str = "params",
                 step: int = 0, dtype: Any = ml_dtypes.bfloat16,
                 max_bytes: int = MAX_FILE_BYTES,
                 metadata: Optional[Mapping[str, Any]] = None
                 ) -> List[pathlib.Path]:
  """Writes a nested dict of arrays as npz shards of at most `max_bytes`.

  Floating leaves are cast to `dtype`; bf16 is stored as its uint16 bit
  pattern (numpy has no bfloat16 and `np.load` would return raw void), and
  `manifest.json` records the real dtype and shape of every leaf. A leaf too
  big for one shard is split along its first axis. Shards are
  `<name>_000.npz`, `<name>_001.npz`, ...; every file is written atomically
  and the manifest last, so a reader never sees a manifest without its
  shards. Older shards of the same name that the new manifest does not list
  are removed.

  Args:
    directory: output folder (created).
    tree: nested dict of arrays (jax or numpy), e.g. {"params": ...}.
    name: file prefix; the manifest is `<name>.manifest.json`.
    step: training step recorded in the manifest.
    dtype: storage dtype of floating leaves.
    max_bytes: largest shard file.
    metadata: extra JSON-serialisable fields for the manifest.

  Returns:
    The written paths, shards first, manifest last.

  Raises:
    ValueError: `max_bytes` cannot hold even one row of some leaf.
  """
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  flat = flax.traverse_util.flatten_dict(jax.device_get(tree), sep="/")
  budget = max_bytes - 4096  # zip end-of-directory and slack
  leaves, pieces = {}, []  # pieces: (leaf key, part index, array)
  for key in sorted(flat):
    arr = np.asarray(flat[key])
    if np.issubdtype(arr.dtype, np.floating):
      arr = arr.astype(dtype)
    stored_dtype = np.dtype(arr.dtype)
    if stored_dtype == np.dtype(ml_dtypes.bfloat16):
      arr = arr.view(np.uint16)
    leaves[key] = dict(shape=list(arr.shape), dtype=stored_dtype.name,
                       parts=[])
    row_bytes = arr.nbytes // max(arr.shape[0], 1) if arr.ndim else arr.nbytes
    if arr.nbytes + _NPZ_OVERHEAD_PER_ARRAY <= budget or arr.ndim == 0:
      pieces.append((key, 0, arr))
      continue
    rows = (budget - _NPZ_OVERHEAD_PER_ARRAY) // max(row_bytes, 1)
    if rows < 1:
      raise ValueError(f"export: one row of {key!r} ({row_bytes} bytes) does "
                       f"not fit in max_bytes={max_bytes}")
    for part, start in enumerate(range(0, arr.shape[0], rows)):
      pieces.append((key, part, arr[start:start + rows]))

  # First-fit in key order: deterministic, and shards stay near max_bytes.
  shards: List[Dict[str, np.ndarray]] = [{}]
  used = [0]
  for key, part, arr in pieces:
    cost = arr.nbytes + _NPZ_OVERHEAD_PER_ARRAY
    if used[-1] + cost > budget and shards[-1]:
      shards.append({})
      used.append(0)
    entry = f"{key}#{part}"
    shards[-1][entry] = arr
    used[-1] += cost
    leaves[key]["parts"].append(
        dict(file=f"{name}_{len(shards) - 1:03d}.npz", entry=entry,
             rows=int(arr.shape[0]) if arr.ndim else 0))

  written = []
  for i, arrays in enumerate(shards):
    data = _npz_bytes(arrays)
    if len(data) > max_bytes:  # the overhead estimate is generous; be sure
      raise AssertionError(f"export shard {i} is {len(data)} > {max_bytes}")
    written.append(io.write_bytes_atomic(directory / f"{name}_{i:03d}.npz",
                                         data))
  manifest = dict(format=EXPORT_FORMAT, name=name, step=int(step),
                  max_bytes=int(max_bytes),
                  files=[p.name for p in written],
                  num_params=int(sum(np.prod(v["shape"], dtype=np.int64)
                                     for v in leaves.values())),
                  metadata=dict(metadata or {}), leaves=leaves)
  written.append(io.write_json_atomic(directory / f"{name}.manifest.json",
                                      manifest))
  keep = set(manifest["files"])
  for stale in directory.glob(f"{name}_[0-9][0-9][0-9].npz"):
    if stale.name not in keep:
      stale.unlink()
  return written


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
  """Reads an npz-shard export written by `write_shards`.

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
        try:
          arr = files[fname][part["entry"]]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
          # A bad CRC, a truncated member, a pickled object (refused).
          raise WeightsError(
              f"{directory / fname}: member {part['entry']!r} (leaf {key!r}) "
              f"is not a readable array ({type(e).__name__}: {e})") from None
        if not isinstance(arr, np.ndarray):
          raise WeightsError(f"{directory / fname}: member {part['entry']!r} "
                             f"(leaf {key!r}) is not an array")
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
  strict.check_against(tree, abstract, context=context)
  got, want = strict.flatten(tree), strict.flatten(abstract)
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


def step_of(manifest: Optional[Mapping[str, Any]]) -> Optional[int]:
  """The training step a manifest records, or None."""
  step = (manifest or {}).get("step")
  return step if isinstance(step, int) and not isinstance(step, bool) else None
