"""Official checkpoint files -> flat {key: LazyTensor}, nothing read yet.

  LazyTensor        shape + dtype of one stored tensor; `np.asarray(t)` maps
                    it read-only from the file (page cache, not process
                    memory) only when a converter asks for it
  read_safetensors  a `.safetensors` file, a sharded folder with its
                    `*.safetensors.index.json`, or the index itself; headers
                    are parsed here (the format is JSON + raw bytes), so no
                    shard is read until one of its tensors is used
  read_pth          a torch `.pth` (`convert.pth.read`: allow-list unpickler),
                    unwrapped from its `vae` / `ema` / `model` / `state_dict`
                    key when the tensors live under one
  open_checkpoint   either, by file name

A state dict is flat (`{"blocks.0.ffn.fc1.weight": LazyTensor}`); the file
formats hold exactly the layout the official code saves.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import struct
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import ml_dtypes
import numpy as np

PathLike = Union[str, os.PathLike]

SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
# Keys under which official `.pth` files nest their tensors.
WRAPPER_KEYS = ("vae", "ema", "model", "state_dict", "trainer")


@dataclasses.dataclass(frozen=True)
class LazyTensor:
  """One tensor inside a file: `np.asarray(t)` memory-maps it (read-only).

  Attributes:
    path: the file; byte_offset: where the storage starts in it.
    numel: elements in the storage; dtype: their type.
    offset, shape, stride: the tensor's view of the storage (elements).
  """
  path: str
  byte_offset: int
  numel: int
  dtype: np.dtype
  offset: int
  shape: Tuple[int, ...]
  stride: Tuple[int, ...]

  @classmethod
  def strided(cls, **kw) -> "LazyTensor":
    return cls(**kw)

  @property
  def size(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))

  @property
  def nbytes(self) -> int:
    return self.size * self.dtype.itemsize

  def __array__(self, dtype=None, copy=None):
    del copy
    if self.size == 0:
      arr = np.zeros(self.shape, self.dtype)
    else:
      storage = np.memmap(self.path, dtype=self.dtype, mode="r",
                          offset=self.byte_offset, shape=(self.numel,))
      item = self.dtype.itemsize
      end = self.offset + 1 + sum((s - 1) * st for s, st in
                                  zip(self.shape, self.stride))
      if end > self.numel or self.offset < 0:
        raise ValueError(f"{self.path}: a tensor view {self.shape} runs past "
                         f"its storage of {self.numel} elements")
      arr = np.lib.stride_tricks.as_strided(
          storage[self.offset:], shape=self.shape,
          strides=tuple(s * item for s in self.stride), writeable=False)
    return arr if dtype is None else arr.astype(dtype)


def _safetensors_header(path: pathlib.Path) -> Dict[str, LazyTensor]:
  size = path.stat().st_size
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise ValueError(f"{path}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", head)
    if n > min(size - 8, 1 << 28):
      raise ValueError(f"{path}: not a safetensors file (header length {n})")
    try:
      header = json.loads(f.read(n))
    except ValueError as e:
      raise ValueError(f"{path}: not a safetensors file ({e})") from None
  base, out = 8 + n, {}
  for key, info in header.items():
    if key == "__metadata__":
      continue
    if info.get("dtype") not in SAFETENSORS_DTYPES:
      raise ValueError(f"{path}: tensor {key!r} has unsupported dtype "
                       f"{info.get('dtype')!r}")
    dtype = SAFETENSORS_DTYPES[info["dtype"]]
    shape = tuple(int(s) for s in info["shape"])
    lo, hi = (int(x) for x in info["data_offsets"])
    numel = int(np.prod(shape, dtype=np.int64))
    if hi - lo != numel * dtype.itemsize or base + hi > size:
      raise ValueError(f"{path}: tensor {key!r} has data_offsets {lo}..{hi} "
                       f"that do not fit shape {shape} x {dtype} in the file")
    stride, acc = [], 1
    for s in reversed(shape):
      stride.insert(0, acc)
      acc *= s
    out[key] = LazyTensor(str(path), base + lo, numel, dtype, 0, shape,
                          tuple(stride))
  return out


def read_safetensors(path: PathLike) -> Dict[str, LazyTensor]:
  """A `.safetensors` file, an index json, or a folder holding either.

  A sharded folder needs exactly one `*.safetensors.index.json`; every shard
  it names must exist and hold the tensors the index places there.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    index = sorted(path.glob("*.safetensors.index.json"))
    files = sorted(path.glob("*.safetensors"))
    if len(index) > 1:
      raise ValueError(f"{path}: several index files: "
                       f"{', '.join(p.name for p in index)}")
    if not index and len(files) != 1:
      raise FileNotFoundError(
          f"{path}: expected one *.safetensors.index.json or one .safetensors "
          f"file, found {len(files)} .safetensors and no index")
    path = index[0] if index else files[0]
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist")
  if not path.name.endswith(".json"):
    return _safetensors_header(path)
  return _from_index(path, _safetensors_header)


def _from_index(index: pathlib.Path, read_shard) -> Dict[str, LazyTensor]:
  """The tensors of every shard an index json's `weight_map` names."""
  weight_map = json.loads(index.read_text()).get("weight_map")
  if not isinstance(weight_map, dict):
    raise ValueError(f"{index}: index json has no 'weight_map' object")
  out: Dict[str, LazyTensor] = {}
  for shard in sorted(set(weight_map.values())):
    file = index.parent / shard
    if not file.exists():
      raise FileNotFoundError(f"{index.name} names shard {shard}, which is "
                              f"absent from {index.parent}")
    tensors = read_shard(file)
    placed = [k for k, v in weight_map.items() if v == shard]
    absent = sorted(k for k in placed if k not in tensors)
    if absent:
      raise ValueError(f"{shard} lacks {', '.join(absent)}, which the index "
                       "places there")
    out.update({k: tensors[k] for k in placed})
  return out


def unwrap(obj: Any, path: str, wrapper: Optional[str] = None
           ) -> Dict[str, LazyTensor]:
  """The flat tensor dict inside a loaded `.pth` object.

  Args:
    obj: what the file holds: a flat dict of tensors, or a dict that keeps
      them under one of `WRAPPER_KEYS` (the Infinity VAE's `"vae"`).
    path: the file, for errors.
    wrapper: require this key (None: bare, or the first wrapper present).
  """
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path}: holds a {type(obj).__name__}, not a dict of "
                     "tensors")
  keys = [wrapper] if wrapper else [k for k in WRAPPER_KEYS if k in obj]
  if wrapper and wrapper not in obj:
    raise ValueError(f"{path}: no {wrapper!r} key (keys: "
                     f"{', '.join(map(str, list(obj)[:8]))})")
  if keys and isinstance(obj[keys[0]], Mapping):
    obj = obj[keys[0]]
  bad = sorted(str(k) for k, v in obj.items() if not isinstance(v, LazyTensor))
  if bad:
    raise ValueError(f"{path}: entries that are not tensors: "
                     f"{', '.join(bad[:8])}")
  return dict(obj)


def read_pth(path: PathLike, wrapper: Optional[str] = None
             ) -> Dict[str, LazyTensor]:
  """`convert.pth.read` + `unwrap`: the flat tensor dict of a `.pth`."""
  from toprovar_jax.convert import pth  # pylint: disable=import-outside-toplevel
  return unwrap(pth.read(path), os.fspath(path), wrapper)


def read_bin_shards(index: PathLike) -> Dict[str, LazyTensor]:
  """`pytorch_model.bin.index.json`: the `.pth`-format shards it names."""
  return _from_index(pathlib.Path(index), read_pth)


def open_checkpoint(path: PathLike) -> Dict[str, LazyTensor]:
  """Reads a `.pth` / `.bin` / `.safetensors` file or a folder of either
  (sharded with its index json, as Hugging Face and Infinity-8B ship)."""
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist")
  if p.is_dir() and not any(p.glob("*.safetensors*")):
    bins = sorted(p.glob("pytorch_model*.bin.index.json"))
    if bins:
      return read_bin_shards(bins[0])
    if (p / "pytorch_model.bin").exists():
      return read_pth(p / "pytorch_model.bin")
  if p.name.endswith(".bin.index.json"):
    return read_bin_shards(p)
  if p.is_dir() or p.name.endswith((".safetensors", ".json")):
    return read_safetensors(p)
  return read_pth(p)


def total_params(sd: Mapping[str, LazyTensor]) -> int:
  return int(sum(t.size for t in sd.values()))
