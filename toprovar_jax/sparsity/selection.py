"""Token scorers and static-K selection (pure jnp, no linen).

Dimension letters: B batch (the CFG-doubled batch where stated), N tokens of
the scale, K kept tokens (static), C width, h×w the scale's grid.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from toprovar_jax.ops import resample

Array = jax.Array


def top_k_sorted(scores: Array, k: int) -> Array:
  """Indices of the k largest scores per row, sorted ascending (B, K) int32.

  Sorting keeps the kept tokens in raster order (SPEC §3), so a plan that
  keeps every token reproduces the dense computation exactly.
  """
  _, idx = jax.lax.top_k(scores, k)
  return jnp.sort(idx, axis=-1).astype(jnp.int32)


def frequency_scores(x: Array) -> Array:
  """FastVAR pivotal-token score ‖x_i − mean_j x_j‖² (B, N, C) -> (B, N)."""
  x = x.astype(jnp.float32)
  return jnp.sum(jnp.square(x - jnp.mean(x, axis=1, keepdims=True)), axis=-1)


def entropy_keep_scores(entropy: Array) -> Array:
  """ToProVAR: keep the lowest prune tendency q_i = φ(s)·R_l·H_i/mean(H).

  Within one scale φ(s) and R_l are positive constants and mean(H) is one
  number per row, so ranking by q is ranking by H: the kept set is the K
  lowest-entropy (most salient) tokens. Returns scores whose top-K are kept.
  """
  return -entropy.astype(jnp.float32)


def resize_token_map(t: Array, src_hw, dst_hw) -> Array:
  """Flattened token map (R, h'w', C) -> (R, hw, C) fp32, area resize."""
  r, _, c = t.shape
  m = t.reshape(r, src_hw[0], src_hw[1], c).astype(jnp.float32)
  return resample.area_resize(m, tuple(dst_hw)).reshape(r, -1, c)


def resize_entropy(entropy: Array, src_hw, dst_hw) -> Array:
  """Previous scale's entropy map (B, h'w') -> this grid (B, hw), area resize."""
  return resize_token_map(entropy[..., None], src_hw, dst_hw)[..., 0]


def select(scores: Array, k: int, *, share_cfg: bool, batch: int) -> Array:
  """Kept indices for the (possibly CFG-doubled) batch.

  Args:
    scores: (R, N) per-row scores, R = batch (no guidance) or 2·batch.
    k: static number of tokens to keep.
    share_cfg: with guidance, the conditional rows' choice is used for their
      unconditional twins (ToProVAR default); otherwise every row chooses on
      its own (FastVAR).
    batch: B, the number of conditional rows.
  Returns:
    (R, K) sorted indices.
  """
  if share_cfg and scores.shape[0] == 2 * batch:
    idx = top_k_sorted(scores[:batch], k)
    return jnp.concatenate([idx, idx], axis=0)
  return top_k_sorted(scores, k)
