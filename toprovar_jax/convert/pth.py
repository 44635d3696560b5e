"""The PyTorch `.pth` container, read lazily and safely, written streaming.

A `.pth` written by `torch.save` (torch >= 1.6) is a zip archive:

  <prefix>/data.pkl      a pickle of the saved object (a dict of tensors)
  <prefix>/data/<key>    one uncompressed entry per storage (raw bytes)
  <prefix>/version       the format version, b"3\\n"
  <prefix>/byteorder     b"little"

The pickle names tensors by `torch._utils._rebuild_tensor_v2(storage,
offset, size, stride, ...)`, and storages by a persistent id
`("storage", torch.<Dtype>Storage, key, location, numel)`.

Reading (`read`): the files are untrusted (SPEC §11). We unpickle with an
allow-list of globals, the same idea as `torch.load(weights_only=True)` but
narrower: the tensor rebuild functions, the typed storage classes and
`collections.OrderedDict`; any other global (the way a malicious pickle runs
code) raises `UnsafePickleError` before anything is executed or written.
Tensors come back as `sources.LazyTensor`s over a read-only memory map of
their zip entry, so nothing is read until a converter asks for that tensor,
and the pages stay file-backed (page cache, not process memory). torch is
not needed to read, and bfloat16 arrives as `ml_dtypes.bfloat16`.

Writing (`write`): the same layout, one tensor at a time, so a checkpoint
larger than RAM can be made (tests, benchmarks); `torch.load` reads it.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Callable, Dict, Iterable, Tuple, Union

import ml_dtypes
import numpy as np

from toprovar_jax.convert import sources

PathLike = Union[str, os.PathLike]

# torch typed-storage class name <-> numpy dtype.
STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}
_STORAGE_NAMES = {v: k for k, v in STORAGE_DTYPES.items()}
_ALIGN = 64  # torch aligns storage data to 64 bytes


class UnsafePickleError(ValueError):
  """The pickle needs more than tensors and containers to load."""


class _Storage:
  def __init__(self, dtype: np.dtype, entry: Tuple[str, int], numel: int):
    self.dtype, self.entry, self.numel = dtype, entry, numel


def _rebuild_tensor_v2(storage, offset, size, stride, *_unused):
  return sources.LazyTensor(
      path=storage.entry[0], byte_offset=storage.entry[1],
      numel=storage.numel, dtype=storage.dtype, offset=int(offset),
      shape=tuple(int(s) for s in size), stride=tuple(int(s) for s in stride))


def _rebuild_parameter(data, *_unused):
  return data


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _Unpickler(pickle.Unpickler):
  """Allow-list unpickler: tensors, storages, OrderedDict, builtins data."""

  def __init__(self, data: bytes, path: str, entries: Dict[str, Tuple[int, int]],
               prefix: str):
    super().__init__(io.BytesIO(data))
    self._path, self._entries, self._prefix = path, entries, prefix

  def find_class(self, module, name):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == "torch" and name in STORAGE_DTYPES:
      return STORAGE_DTYPES[name]
    raise UnsafePickleError(
        f"{self._path}: refusing to unpickle global {module}.{name}: the file "
        "needs more than tensors and containers to load (torch.load's "
        "weights_only would refuse it too); it may run code, so it is not "
        "loaded")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], np.dtype)):
      raise UnsafePickleError(f"{self._path}: unknown persistent id {pid!r:.80}")
    _, dtype, key, _location, numel = pid
    name = f"{self._prefix}data/{key}"
    if name not in self._entries:
      raise ValueError(f"{self._path}: storage {key!r} has no zip entry {name}")
    offset, size = self._entries[name]
    if size < int(numel) * dtype.itemsize:
      raise ValueError(f"{self._path}: storage {key!r} holds {size} bytes, "
                       f"{numel} x {dtype} need more")
    return _Storage(dtype, (self._path, offset), int(numel))


def _data_offset(f, info: zipfile.ZipInfo) -> int:
  f.seek(info.header_offset)
  header = f.read(30)
  if header[:4] != b"PK\x03\x04":
    raise ValueError(f"bad zip local header for {info.filename}")
  name_len, extra_len = struct.unpack("<HH", header[26:30])
  return info.header_offset + 30 + name_len + extra_len


def read(path: PathLike) -> Any:
  """Loads the object of a `.pth` file with tensors as `LazyTensor`s.

  Raises:
    UnsafePickleError: the pickle references a global outside the allow-list
      (nothing of it has run).
    ValueError: not a torch zip checkpoint (e.g. the legacy pre-1.6 format).
  """
  path = os.fspath(path)
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path}: not a torch zip checkpoint (torch >= 1.6 "
                     "format); re-save it with a current torch.save")
  with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
    pkls = [n for n in zf.namelist() if n.endswith("data.pkl")]
    if len(pkls) != 1:
      raise ValueError(f"{path}: expected one <prefix>/data.pkl entry, "
                       f"found {len(pkls)}")
    prefix = pkls[0][:-len("data.pkl")]
    entries = {}
    for info in zf.infolist():
      if info.filename.startswith(prefix + "data/"):
        if info.compress_type != zipfile.ZIP_STORED:
          raise ValueError(f"{path}: {info.filename} is compressed; torch "
                           "stores tensor data uncompressed")
        entries[info.filename] = (_data_offset(f, info), info.file_size)
    data = zf.read(pkls[0])
  return _Unpickler(data, path, entries, prefix).load()


# -- writing ------------------------------------------------------------------


class _Global:
  """A pickled reference to `module.name`, written without importing it."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle requires reduce callables be callable
    raise TypeError("placeholder")


class _StorageRef:
  def __init__(self, tensor: "_TensorRef"):
    self.tensor = tensor


class _TensorRef:
  def __init__(self, key: str, shape: tuple, dtype: np.dtype):
    self.key, self.shape, self.dtype = key, shape, dtype

  def __reduce__(self):
    stride, acc = [], 1
    for s in reversed(self.shape):
      stride.insert(0, acc)
      acc *= s
    return (_Global("torch._utils", "_rebuild_tensor_v2"),
            (_StorageRef(self), 0, tuple(self.shape), tuple(stride), False,
             collections.OrderedDict()))


class _Pickler(pickle._Pickler):  # pylint: disable=protected-access
  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access

  def save_placeholder_global(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
    self.memoize(obj)

  dispatch[_Global] = save_placeholder_global

  def persistent_id(self, obj):
    if isinstance(obj, _StorageRef):
      t = obj.tensor
      numel = int(np.prod(t.shape, dtype=np.int64))
      return ("storage", _Global("torch", _STORAGE_NAMES[t.dtype]), t.key,
              "cpu", numel)
    return None


ArrayOrThunk = Union[np.ndarray, Callable[[], np.ndarray]]


def write(path: PathLike, tensors: Iterable[Tuple[str, tuple, Any, ArrayOrThunk]],
          *, wrap: str = "", prefix: str = "archive") -> None:
  """Writes `{name: tensor}` as a torch `.pth`, one tensor in memory at a time.

  Args:
    path: the file to write.
    tensors: (name, shape, dtype, array or zero-argument function returning
      it); a function is called only when its tensor is written.
    wrap: if set, the dict is saved under this key (`{"vae": {...}}`).
    prefix: the archive's top folder (torch uses the file stem).
  """
  refs = collections.OrderedDict()
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
    for i, (name, shape, dtype, value) in enumerate(tensors):
      dtype = np.dtype(dtype)
      shape = tuple(int(s) for s in shape)
      arr = np.ascontiguousarray(value() if callable(value) else value,
                                 dtype=dtype)
      if arr.shape != shape:
        raise ValueError(f"{name}: shape {arr.shape} is not {shape}")
      refs[name] = _TensorRef(str(i), shape, dtype)
      _write_entry(zf, f"{prefix}/data/{i}", arr.reshape(-1).view(np.uint8))
      del arr
    buf = io.BytesIO()
    obj = {wrap: refs} if wrap else refs
    _Pickler(buf, protocol=2).dump(obj)
    _write_entry(zf, f"{prefix}/data.pkl", buf.getvalue())
    _write_entry(zf, f"{prefix}/byteorder", b"little")
    _write_entry(zf, f"{prefix}/version", b"3\n")


def _write_entry(zf: zipfile.ZipFile, name: str, data) -> None:
  info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
  info.compress_type = zipfile.ZIP_STORED
  nbytes = len(data)
  info.file_size = nbytes
  big = nbytes >= (1 << 31)
  # Pad the local header's extra field so the data starts 64-byte aligned.
  start = zf.fp.tell() + 30 + len(name.encode()) + (20 if big else 0)
  pad = (-(start + 4)) % _ALIGN
  info.extra = struct.pack("<HH", 0x4650, pad) + b"\0" * pad
  with zf.open(info, "w", force_zip64=big) as out:
    step = 1 << 26
    for lo in range(0, nbytes, step):
      out.write(data[lo:lo + step])
