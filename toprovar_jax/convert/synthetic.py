"""Synthetic official-format checkpoints (tests, benchmarks; no downloads).

  official_keys   `manifest.expected(target)` renamed to the file's layout
                  (Infinity-2B's `block_chunks.{c}.module.{j}.`)
  write_pth       a `.pth` written tensor by tensor (`convert.pth.write`), so
                  a checkpoint larger than RAM can be made; optional wrapper
                  key (`vae`) and parameter-free buffers
  write_sharded   safetensors shards + `model.safetensors.index.json`, as
                  Infinity-8B and Hugging Face ship them

Values are seeded normal noise scaled by 0.02 (`tensor(name, shape, ...)`),
so a test can rebuild any tensor without keeping the file's contents.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import zlib
from typing import Dict, Iterable, Mapping, Tuple

import numpy as np

from toprovar_jax.convert import manifest
from toprovar_jax.convert import pth

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.*)$")


def official_keys(target: manifest.Target, *, chunks: int = 0
                  ) -> Dict[str, Tuple[int, ...]]:
  """{key as the official file spells it: shape}; `chunks` > 0 writes
  transformer blocks as `block_chunks.{l // per}.module.{l % per}.`."""
  want = manifest.expected(target)
  if not chunks:
    return dict(want)
  per = target.config.depth // chunks
  out = {}
  for key, shape in want.items():
    m = _BLOCK_RE.match(key)
    if m:
      layer = int(m.group(1))
      key = f"block_chunks.{layer // per}.module.{layer % per}.{m.group(2)}"
    out[key] = shape
  return out


def tensor(name: str, shape, dtype=np.float32, seed: int = 0) -> np.ndarray:
  """The synthetic value of one tensor (deterministic in name and seed)."""
  rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
  return (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(dtype)


def _items(keys: Mapping[str, tuple], dtype, seed: int):
  for name, shape in keys.items():
    yield name, shape, dtype, (lambda n=name, s=shape: tensor(n, s, dtype, seed))


def write_pth(path, keys: Mapping[str, tuple], *, dtype=np.float32,
              seed: int = 0, wrap: str = "",
              buffers: Mapping[str, np.ndarray] = ()) -> int:
  """Writes a synthetic `.pth`; returns its size in bytes."""
  extra = [(k, v.shape, v.dtype, v) for k, v in dict(buffers).items()]
  pth.write(path, list(_items(keys, dtype, seed)) + extra, wrap=wrap)
  return os.path.getsize(path)


def write_sharded(folder, keys: Mapping[str, tuple], *, dtype=np.float32,
                  seed: int = 0, shard_bytes: int = 1 << 30) -> Iterable[str]:
  """Writes `model-0000i-of-0000n.safetensors` shards + the index json."""
  from safetensors import numpy as st_numpy  # pylint: disable=import-outside-toplevel
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  groups, size = [[]], 0
  item = np.dtype(dtype).itemsize
  for name, shape in keys.items():
    nbytes = int(np.prod(shape, dtype=np.int64)) * item
    if groups[-1] and size + nbytes > shard_bytes:
      groups.append([])
      size = 0
    groups[-1].append(name)
    size += nbytes
  weight_map = {}
  for i, names in enumerate(groups):
    fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
    st_numpy.save_file({n: tensor(n, keys[n], dtype, seed) for n in names},
                       str(folder / fname))
    weight_map.update({n: fname for n in names})
  (folder / "model.safetensors.index.json").write_text(json.dumps(
      {"metadata": {}, "weight_map": weight_map}, indent=1))
  return sorted(set(weight_map.values()))
