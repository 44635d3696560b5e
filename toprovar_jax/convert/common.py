"""Strict state_dict bookkeeping shared by every converter (pure numpy).

Official loaders are non-strict (Infinity's `load_state_dict(strict=False)`);
ours are strict: every tensor must be consumed, every expected key present,
every shape right, and the error (`weights.strict.ConversionError`) lists all
offenders at once. The converted tree is then checked against the model
with `weights.strict.check_against`.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, Optional

import numpy as np

from toprovar_jax.weights import strict


class StateDict:
  """A read-tracking view of a flat {official_key: array} mapping.

  Converters `take` keys with their expected shapes; `finish` raises a
  `strict.ConversionError` listing missing, mis-shaped and never-taken keys.
  """

  def __init__(self, sd: Mapping[str, Any], *, ignore: Iterable[str] = (),
               context: str = ""):
    # Values are read (np.asarray) only when taken: a `sources.LazyTensor`
    # stays on disk until then.
    self._record = sd if isinstance(sd, RecordKeys) else None
    self._sd = {} if self._record is not None else dict(sd)
    self._used = set()
    self._missing = []
    self._mismatched = []
    self._context = context
    # Buffers (zero_k_bias, lvl_1L, attention masks, ...) that carry no
    # parameters: allowed to be present, never required.
    self._ignore_suffixes = tuple(ignore)

  def has(self, key: str) -> bool:
    return self._record is not None or key in self._sd

  def take(self, key: str, shape: Optional[tuple] = None,
           dtype=np.float32) -> Optional[np.ndarray]:
    """Returns the array under `key` (cast to dtype), recording problems."""
    if self._record is not None:
      self._record.taken[key] = tuple(shape)
      return np.zeros(shape, dtype or np.float32)
    if key not in self._sd:
      self._missing.append(key)
      return None
    self._used.add(key)
    value = self._sd[key]
    got = tuple(value.shape) if hasattr(value, "shape") else np.shape(value)
    if shape is not None and got != tuple(shape):
      self._mismatched.append((key, got, tuple(shape)))
      return None
    arr = np.asarray(value)
    return arr.astype(dtype) if dtype is not None else arr

  def finish(self):
    unexpected = [
        k for k in self._sd if k not in self._used
        and not any(k.endswith(s) or k == s for s in self._ignore_suffixes)]
    if self._missing or unexpected or self._mismatched:
      raise strict.ConversionError(
          missing=self._missing, unexpected=unexpected,
          mismatched=self._mismatched, context=self._context)


class RecordKeys(Mapping):
  """A state dict that holds every key: converters given one record the
  official keys and shapes they take (in `taken`) and receive zeros.

  This is how the manifests of official files are derived from our
  architecture (`convert.manifest`), with no upstream code.
  """

  def __init__(self):
    self.taken: Dict[str, tuple] = {}

  def __getitem__(self, key):
    raise KeyError(key)

  def __iter__(self):
    return iter(())

  def __len__(self):
    return 0


def linear(w: Optional[np.ndarray]) -> Optional[np.ndarray]:
  """torch Linear weight (out, in) -> flax Dense kernel (in, out)."""
  return None if w is None else np.ascontiguousarray(w.T)


def conv2d(w: Optional[np.ndarray]) -> Optional[np.ndarray]:
  """torch Conv2d weight (O, I, kh, kw) -> flax Conv kernel (kh, kw, I, O)."""
  return None if w is None else np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def strip_prefix(sd: Mapping[str, Any], prefix: str) -> Dict[str, Any]:
  """Keeps the keys that start with `prefix` (e.g. "var/"), without it."""
  return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
