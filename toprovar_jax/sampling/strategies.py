"""Guidance and token sampling rules of the official samplers (pure jnp).

Dimension letters: B batch, N tokens of one scale, V choices per token
(VAR: codebook size; Infinity: 2 per bit, tokens are then N·d bit choices).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def guide_var(logits_2B: Array, cfg_scale: Array, si: int,
              num_scales: int) -> Array:
  """VAR ramp: t = cfg·si/(S−1); (1+t)·cond − t·uncond (ARCHITECTURES A.4).

  Args:
    logits_2B: (2B, N, V), conditional rows first.
  Returns:
    (B, N, V) guided logits.
  """
  b = logits_2B.shape[0] // 2
  t = cfg_scale * (si / (num_scales - 1))
  return (1.0 + t) * logits_2B[:b] - t * logits_2B[b:]


def guide_infinity(logits_2B: Array, cfg_scale: Array, tau: Array) -> Array:
  """Infinity: logits/τ, then cfg·cond + (1−cfg)·uncond (ARCHITECTURES B.6)."""
  b = logits_2B.shape[0] // 2
  z = logits_2B / tau
  return cfg_scale * z[:b] + (1.0 - cfg_scale) * z[b:]


def top_k_top_p_filter(logits: Array, top_k: int, top_p: float) -> Array:
  """Masks logits to -inf exactly as the official `sample_with_top_k_top_p_`.

  top-k: drop logits strictly below the k-th largest (ties at the k-th value
  survive, as in torch). top-p: sort ascending, drop entries whose cumulative
  softmax is ≤ 1 − top_p, never the largest.

  Args:
    logits: (..., V).
    top_k: static; 0 (or ≥ V) disables.
    top_p: static; 0 disables.
  """
  v = logits.shape[-1]
  if 0 < top_k < v:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p > 0:
    order = jnp.argsort(logits, axis=-1)  # ascending
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    remove_sorted = cum <= (1.0 - top_p)
    remove_sorted = remove_sorted.at[..., -1].set(False)
    # Scatter the sorted decision back to vocabulary order.
    remove = jnp.zeros_like(remove_sorted)
    remove = jnp.put_along_axis(remove, order, remove_sorted, axis=-1,
                                inplace=False)
    logits = jnp.where(remove, -jnp.inf, logits)
  return logits


def sample(rng: Array, logits: Array, *, top_k: int, top_p: float) -> Array:
  """Draws one choice per row (..., V) -> (...) int32.

  top_k == 1 is greedy (argmax) without randomness.
  """
  if top_k == 1:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = top_k_top_p_filter(logits.astype(jnp.float32), top_k, top_p)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def sample_rows(row_keys: Array, logits: Array, *, top_k: int,
                top_p: float) -> Array:
  """`sample` with one PRNG key per row: (B,) keys, (B, ...) -> (B, ...).

  Row b draws from row_keys[b] alone (vmap over rows), so a row's choices
  do not depend on the batch size, the other rows or their order.
  """
  return jax.vmap(lambda k, lg: sample(k, lg, top_k=top_k, top_p=top_p))(
      row_keys, logits)


def scale_keys(row_keys: Array, si: int) -> Array:
  """Per-row keys of scale si: fold_in(row_key, si) for each (B,) key."""
  return jax.vmap(lambda k: jax.random.fold_in(k, si))(row_keys)
