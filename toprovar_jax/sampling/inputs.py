"""Checks of what a caller hands the sampler (SPEC §11).

Shared by `Sampler`, `Branching` and the runner, so a bad key array or text
mask gets the same one-line error on every route; kept apart from
`sampler.py` because they are host-side rules, not part of the program.
"""

import jax
import numpy as np


def check_row_keys(rng, batch: int) -> None:
  """Raises ValueError unless `rng` is (batch,) typed PRNG keys (works on
  tracers: shapes and dtypes are static)."""
  if (not jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
      or tuple(rng.shape) != (batch,)):
    raise ValueError(
        f"rng must be ({batch},) typed PRNG keys (jax.random.key), one per "
        f"row of the batch; got {rng.dtype} {tuple(rng.shape)}")


def check_text_mask(text_mask: np.ndarray) -> None:
  """Raises ValueError unless every row of the (B, T) bool mask is a prefix
  (True for the real tokens, then False for the padding)."""
  if text_mask.ndim != 2 or text_mask.dtype != np.bool_:
    raise ValueError("text_mask must be a (B, T) bool array, got "
                     f"{text_mask.dtype} {text_mask.shape}")
  lengths = text_mask.sum(axis=1)
  prefix = np.arange(text_mask.shape[1])[None] < lengths[:, None]
  bad = np.flatnonzero(np.any(text_mask != prefix, axis=1))
  if bad.size:
    raise ValueError(
        f"text_mask row {int(bad[0])} is not a prefix mask (real tokens "
        "first, then padding); the sampler passes each row's text to "
        "cross-attention as a length, as the official varlen code does")
