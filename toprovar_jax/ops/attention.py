r"""Attention with optional per-query softmax entropy (SPEC §4).

Shape letters: B batch, Nq queries, Nk keys, H heads, D query/key head dim,
Dv value head dim (= D in the models).

The model code calls `attention` only. Layout is cuDNN's BTNH:
q (B, Nq, H, D), k (B, Nk, H, D), v (B, Nk, H, Dv). Logits are
s = scale · q·k; self-attention is cosine attention with the per-head scale
folded into q, so `scale=1.0` there, and cross-attention uses 1/√D.

Entropy is that of the *actual* softmax row, H_i = −Σ_j p_ij log p_ij (nats),
averaged over heads, returned as (B, Nq) float32. Every implementation
computes it exactly (no sampling, no approximation):

- 'xla': one pass of the FAE recurrence over all keys (see `fae_pallas`),
  i.e. the closed form H = logsumexp(s) − Σ_j p_j s_j written about the row
  max m: H = log ℓ − E/ℓ with ℓ = Σ exp(s − m), E = Σ exp(s − m)(s − m).
  Entropy adds two row reductions (ℓ, E) over the logits and probabilities
  that the output needs anyway, no (B, H, Nq, Nk) tensor of its own (XLA
  CPU peak temp: 2.3 f32 logits-sized buffers vs 1.5 without entropy, same
  as the naive reference). `query_chunk` bounds all of them.
- 'cudnn': with scale folded into s, Σ_j p_j s_j = scale · q·(Σ_j p_j k_j),
  so one cuDNN flash call with values [V | K] (head dim Dv + D) returns the
  output and k̄ = Σ_j p_j k_j, and its softmax statistic is lse = logsumexp(s):
  H = lse − scale · q·k̄ (docs/ANCHORS.md: +63 % over plain cuDNN). cuDNN
  needs bf16/f16, D + Dv ≤ 256 (Hopper) and, with a mask and entropy, even
  Nq and Nk (JAX's check for the kernel that emits the statistic).
- 'pallas': the fused FAE kernel (`fae_pallas.fae_attention`), one extra
  running accumulator next to the flash-attention ones.

Masks: `mask` bool (Nq, Nk) or (B|1, H|1, Nq, Nk), `key_mask` bool (B, Nk),
True = attend; or `key_lengths` (B,) int, the prefix form of a key mask
(keys j < key_lengths[b] valid: padded text), which cuDNN takes as its padding
mask without a bias tensor. A query with no valid key gets output 0 and
entropy 0 in every implementation (never NaN); masked keys must hold finite
values.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Literal

import jax
from jax import lax
import jax.numpy as jnp

from toprovar_jax.ops import fae_pallas

Implementation = Literal['xla', 'cudnn', 'pallas', 'auto']
_IMPLEMENTATIONS = ('xla', 'cudnn', 'pallas', 'auto')
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)

# Tiles of the Pallas kernel per head dim. 64×64 keeps the f32 accumulators
# (O, m, ℓ, E) in registers with 4 warps for D ≤ 64; D = 128 on Hopper takes
# 128 query rows with 8 warps, as the Triton flash-attention reference does.
# Not yet tuned on the GPU; they are jit-static.
_PALLAS_BLOCKS = {64: (64, 64), 128: (128, 64)}


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    scale: float = 1.0,
    mask: jax.Array | None = None,
    key_mask: jax.Array | None = None,
    implementation: Implementation = 'xla',
    return_entropy: bool = False,
    precision: Any = None,
    query_chunk: int | None = None,
    kv_len: int | None = None,
    block_sizes: tuple[int, int] | None = None,
    key_lengths: jax.Array | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Multi-head softmax attention, optionally with per-query entropy.

  Args:
    q: (B, Nq, H, D) queries (scale already folded in for cosine attention).
    k: (B, Nk, H, D) keys.
    v: (B, Nk, H, Dv) values, same dtype as k.
    scale: Python float multiplying q·k (static).
    mask: optional bool (Nq, Nk) or (B|1, H|1, Nq, Nk); True = attend.
    key_mask: optional bool (B, Nk); True = valid key (text padding).
    implementation: 'xla' (fp32 parity path), 'cudnn', 'pallas' (FAE) or
      'auto' (GPU: pallas when entropy is asked, else cudnn for bf16/f16;
      otherwise xla).
    return_entropy: also return the head-averaged softmax entropy.
    precision: lax precision for the matmuls ('xla' and 'pallas'; cuDNN has
      its own).
    query_chunk: 'xla' only: static query chunk; bounds the logits to
      (B, H, query_chunk, Nk). None = one chunk.
    kv_len: static number of keys in use when k/v are a fixed-size cache
      whose first `kv_len` rows are filled; the rest may hold anything (even
      NaN for 'xla' and 'pallas'; finite values for 'cudnn'). 'pallas' reads
      only those rows; 'cudnn' passes it as `key_value_seq_lengths` (cuDNN's
      padding mask, no copy); 'xla' takes a static slice (bit-identical to
      passing the truncated keys, no wasted logits). Masks still span all Nk
      columns.
    block_sizes: 'pallas' only: (block_q, block_k) powers of two ≥ 16.
    key_lengths: optional (B,) int (traced): only keys j < key_lengths[b] are
      valid in row b, i.e. key_mask = arange(Nk) < key_lengths[:, None]
      (the official code's varlen text lengths). Not with key_mask. 'cudnn'
      passes it as `key_value_seq_lengths` (no (B, ·, Nq, Nk) bias is built);
      the others build the key mask.

  Returns:
    out (B, Nq, H, Dv) in q.dtype; with `return_entropy`, also
    entropy (B, Nq) float32 in nats.

  Raises:
    ValueError: on inconsistent shapes, non-bool masks or an unknown
      implementation.
    NotImplementedError: 'cudnn' entropy when the private cuDNN API that
      returns the logsumexp is missing from this jax.
  """
  mask, key_mask = _check_inputs(q, k, v, mask, key_mask)
  if key_lengths is not None:
    if key_mask is not None:
      raise ValueError('pass key_mask or key_lengths, not both.')
    if key_lengths.shape != (q.shape[0],):
      raise ValueError(f'key_lengths must be (B,) = ({q.shape[0]},); got '
                       f'{key_lengths.shape}.')
  if kv_len is not None and not 0 < kv_len <= k.shape[1]:
    raise ValueError(f'kv_len={kv_len} must be in [1, {k.shape[1]}].')
  if implementation not in _IMPLEMENTATIONS:
    raise ValueError(f'implementation must be one of {_IMPLEMENTATIONS}, '
                     f'got {implementation!r}.')
  if implementation == 'auto':
    implementation = _auto_implementation(q, return_entropy)

  if key_lengths is not None and (implementation != 'cudnn'
                                  or mask is not None):
    # Only cuDNN without a bias mask takes the lengths as they are (its
    # padding mask); everywhere else they become the key mask they stand for.
    key_mask = jnp.arange(k.shape[1])[None] < key_lengths[:, None]
    key_lengths = None

  if implementation == 'pallas':
    if block_sizes is None:
      block_sizes = _PALLAS_BLOCKS.get(q.shape[-1], (64, 64))
    result = fae_pallas.fae_attention(
        q, k, v, mask, key_mask, scale=float(scale), kv_len=kv_len,
        return_entropy=return_entropy, block_q=block_sizes[0],
        block_k=block_sizes[1], interpret=jax.default_backend() != 'gpu',
        precision=precision)
    if not return_entropy:
      return result
    out, entropy = result
    return out, jnp.mean(entropy, axis=1)  # (B, H, Nq) -> (B, Nq)

  if kv_len is not None and kv_len == k.shape[1]:
    kv_len = None
  if implementation == 'cudnn':
    out, entropy = _cudnn_attention(q, k, v, mask, key_mask, scale=scale,
                                    return_entropy=return_entropy,
                                    kv_len=kv_len, key_lengths=key_lengths)
  else:
    if kv_len is not None:
      # A static slice rather than a mask: exact, indifferent to what the
      # unused cache rows hold, and no logits for them. On the GPU the slice
      # rides along with the transpose XLA inserts for the einsum anyway.
      k, v = k[:, :kv_len], v[:, :kv_len]
      mask = None if mask is None else mask[..., :kv_len]
      key_mask = None if key_mask is None else key_mask[:, :kv_len]
    out, entropy = _xla_attention(
        q, k, v, mask, key_mask, scale=scale, return_entropy=return_entropy,
        precision=precision, query_chunk=query_chunk)
  return (out, entropy) if return_entropy else out


def entropy_reference(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array | None = None,
    *,
    scale: float = 1.0,
    mask: jax.Array | None = None,
    key_mask: jax.Array | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Naive fp32 softmax entropy (tests only: materialises p and log p).

  Args:
    q: (B, Nq, H, D).
    k: (B, Nk, H, D).
    v: optional (B, Nk, H, Dv); when given the output is returned too.
    scale: multiplies q·k.
    mask: optional bool (Nq, Nk) or (B|1, H|1, Nq, Nk); True = attend.
    key_mask: optional bool (B, Nk).

  Returns:
    entropy (B, Nq) float32, −Σ p log p averaged over heads; or
    (out (B, Nq, H, Dv) float32, entropy) when `v` is given. Queries with no
    valid key get p = 0, so output 0 and entropy 0.
  """
  mask, key_mask = _check_inputs(q, k, v if v is not None else k, mask,
                                 key_mask)
  s = jnp.einsum('bqhd,bkhd->bhqk', q.astype(jnp.float32),
                 k.astype(jnp.float32), precision=lax.Precision.HIGHEST)
  s = s * scale
  valid = _combine_masks(mask, key_mask)
  if valid is None:
    p = jax.nn.softmax(s, axis=-1)
  else:
    valid = jnp.broadcast_to(valid, s.shape)
    p = jax.nn.softmax(jnp.where(valid, s, -jnp.inf), axis=-1)
    p = jnp.where(jnp.any(valid, axis=-1, keepdims=True), p, 0.0)
  entropy = -jnp.sum(jax.scipy.special.xlogy(p, p), axis=-1)  # (B, H, Nq)
  entropy = jnp.mean(entropy, axis=1)
  if v is None:
    return entropy
  out = jnp.einsum('bhqk,bkhd->bqhd', p, v.astype(jnp.float32),
                   precision=lax.Precision.HIGHEST)
  return out, entropy


# ----------------------------------------------------------------------------
# Input checks and masks.
# ----------------------------------------------------------------------------


def _check_inputs(q, k, v, mask, key_mask):
  """Validates shapes; returns (mask as 4-D bool or None, key_mask)."""
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError('q, k, v must be (B, N, H, D); got shapes '
                     f'{q.shape}, {k.shape}, {v.shape}.')
  batch, num_queries, num_heads, head_dim = q.shape
  num_keys = k.shape[1]
  if k.shape != (batch, num_keys, num_heads, head_dim):
    raise ValueError(f'k shape {k.shape} does not match q shape {q.shape}.')
  if v.shape[:3] != k.shape[:3]:
    raise ValueError(f'v shape {v.shape} does not match k shape {k.shape}.')
  if mask is not None:
    if mask.dtype != jnp.bool_:
      raise ValueError(f'mask must be bool (True = attend), got {mask.dtype}.')
    if mask.ndim == 2:
      mask = mask[None, None]
    if (mask.ndim != 4 or mask.shape[2:] != (num_queries, num_keys)
        or mask.shape[0] not in (1, batch)
        or mask.shape[1] not in (1, num_heads)):
      raise ValueError(
          f'mask must be (Nq, Nk) = ({num_queries}, {num_keys}) or (B|1, H|1,'
          f' Nq, Nk) with B={batch}, H={num_heads}; got {mask.shape}.')
  if key_mask is not None:
    if key_mask.dtype != jnp.bool_:
      raise ValueError(f'key_mask must be bool, got {key_mask.dtype}.')
    if key_mask.shape != (batch, num_keys):
      raise ValueError(f'key_mask must be (B, Nk) = ({batch}, {num_keys}); '
                       f'got {key_mask.shape}.')
  return mask, key_mask


def _combine_masks(mask, key_mask):
  """AND of the masks, broadcastable to (B, H, Nq, Nk); None if neither."""
  if key_mask is None:
    return mask
  key_mask = key_mask[:, None, None, :]
  return key_mask if mask is None else mask & key_mask


def _auto_implementation(q: jax.Array, return_entropy: bool) -> str:
  """GPU: FAE for entropy, cuDNN for plain bf16/f16; elsewhere 'xla'."""
  if jax.default_backend() != 'gpu':
    return 'xla'
  if return_entropy:
    return 'pallas'
  return 'cudnn' if q.dtype in _CUDNN_DTYPES else 'xla'


# ----------------------------------------------------------------------------
# 'xla': the parity path.
# ----------------------------------------------------------------------------


def _xla_attention(q, k, v, mask, key_mask, *, scale, return_entropy,
                   precision, query_chunk):
  """Einsum attention in f32 accumulation; optionally chunked over queries."""
  batch, num_queries, num_heads, _ = q.shape
  chunk_fn = functools.partial(
      _xla_chunk, k=k, v=v, key_mask=key_mask, scale=scale,
      return_entropy=return_entropy, precision=precision)
  if query_chunk is None or query_chunk >= num_queries:
    return chunk_fn(q, mask)

  # Pad Nq to a multiple of the static chunk and map sequentially, so peak
  # memory is one chunk's (B, H, query_chunk, Nk) logits. Padded queries are
  # zeros (finite) and sliced away.
  num_chunks = -(-num_queries // query_chunk)
  pad = num_chunks * query_chunk - num_queries
  q_c = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
  q_c = q_c.reshape(batch, num_chunks, query_chunk, *q.shape[2:])
  q_c = jnp.moveaxis(q_c, 1, 0)  # (C, B, query_chunk, H, D)
  mask_c = None
  if mask is not None:
    mask_c = jnp.pad(mask, ((0, 0), (0, 0), (0, pad), (0, 0)),
                     constant_values=True)
    mask_c = mask_c.reshape(*mask.shape[:2], num_chunks, query_chunk,
                            mask.shape[-1])
    mask_c = jnp.moveaxis(mask_c, 2, 0)  # (C, B|1, H|1, query_chunk, Nk)
  out, entropy = lax.map(lambda xs: chunk_fn(*xs), (q_c, mask_c))
  out = jnp.moveaxis(out, 0, 1).reshape(batch, -1, num_heads, v.shape[-1])
  out = out[:, :num_queries]
  if entropy is not None:
    entropy = jnp.moveaxis(entropy, 0, 1).reshape(batch, -1)[:, :num_queries]
  return out, entropy


def _xla_chunk(q, mask, *, k, v, key_mask, scale, return_entropy, precision):
  """q (B, Cq, H, D), mask (B|1, H|1, Cq, Nk) -> out, entropy (B, Cq)."""
  s = jnp.einsum('bqhd,bkhd->bhqk', q, k, precision=precision,
                 preferred_element_type=jnp.float32)
  if scale != 1.0:
    s = s * scale
  valid = _combine_masks(mask, key_mask)
  # One block of the FAE recurrence is the exact closed form about the row
  # max: the same arithmetic the kernel runs per key block.
  carry = fae_pallas.init_carry(s.shape[:-1])
  (_, l, e), p, _ = fae_pallas.online_entropy_update(carry, s, valid)
  # p is cast to v's dtype as a flash kernel does (a no-op for f32 inputs).
  out = jnp.einsum('bhqk,bkhd->bqhd', p.astype(v.dtype), v,
                   precision=precision, preferred_element_type=jnp.float32)
  l_bqh = jnp.transpose(l, (0, 2, 1))[..., None]
  out = jnp.where(l_bqh > 0, out / jnp.where(l_bqh > 0, l_bqh, 1.0), 0.0)
  entropy = None
  if return_entropy:
    entropy = jnp.mean(fae_pallas.online_entropy_finalize(l, e), axis=1)
  return out.astype(q.dtype), entropy


# ----------------------------------------------------------------------------
# 'cudnn'.
# ----------------------------------------------------------------------------


def _cudnn_fused_attention(with_lengths: bool = False):
  """The private cuDNN entry that returns the logsumexp, or a clear error.

  `jax.nn.dot_product_attention(..., return_residual=True)` casts the
  logsumexp to the output dtype (bf16 ruins H = lse − s̄) and requires
  Dv = D, so the [V | K] trick needs the private function. A private module
  may change in any release: check it rather than trust it.

  Args:
    with_lengths: the caller passes sequence lengths (`kv_len`), so the
      function must also take q_seqlen, kv_seqlen and mask_type.

  Returns:
    (the function, its MaskType enum or None when not `with_lengths`).
  """
  try:
    # pylint: disable-next=g-import-not-at-top,import-outside-toplevel
    from jax._src.cudnn import fused_attention_stablehlo
    fn = fused_attention_stablehlo.dot_product_attention
    params = inspect.signature(fn).parameters
    mask_types = (fused_attention_stablehlo.MaskType if with_lengths
                  else None)
  except (ImportError, AttributeError, TypeError, ValueError) as err:
    raise NotImplementedError(
        "implementation='cudnn' with return_entropy needs "
        'jax._src.cudnn.fused_attention_stablehlo.dot_product_attention, '
        f"which this jax ({jax.__version__}) lacks ({err}); use "
        "implementation='pallas' or 'xla'.") from err
  required = {'mask', 'scale', 'return_residual'}
  if with_lengths:
    required |= {'q_seqlen', 'kv_seqlen', 'mask_type'}
  missing = required - set(params)
  if missing:
    raise NotImplementedError(
        'The private cuDNN attention of this jax '
        f'({jax.__version__}) has no {sorted(missing)} argument; use '
        "implementation='pallas' or 'xla'.")
  return fn, mask_types


def _cudnn_attention(q, k, v, mask, key_mask, *, scale, return_entropy,
                     kv_len=None, key_lengths=None):
  """cuDNN flash attention; entropy via values [V | K] and the logsumexp.

  kv_len (static, < Nk, or None) and key_lengths ((B,) traced, or None;
  never with `mask`: `attention` turns them into a key mask then) become
  cuDNN's padding mask: row b has min(kv_len, key_lengths[b]) valid keys and
  all Nq queries valid.
  """
  batch, num_queries, num_heads, _ = q.shape
  valid = _combine_masks(mask, key_mask)
  if valid is not None:
    # cuDNN takes the mask as a bias of full (·, ·, Nq, Nk) extent.
    valid = jnp.broadcast_to(
        valid, (valid.shape[0], valid.shape[1], num_queries, k.shape[1]))
  # Which queries have a valid key (for the empty-row rules below).
  valid_used = valid
  kv_seqlen = None
  if kv_len is not None:
    kv_seqlen = jnp.full((batch,), kv_len, jnp.int32)
    if valid is not None:
      valid_used = valid[..., :kv_len]
  if key_lengths is not None:
    key_lengths = key_lengths.astype(jnp.int32)
    kv_seqlen = (key_lengths if kv_seqlen is None
                 else jnp.minimum(kv_seqlen, key_lengths))
    # Rows with no valid key: (B, 1, 1, 1) against (B, Nq, H, D) outputs.
    valid_used = (kv_seqlen > 0)[:, None, None, None]
  if not return_entropy:
    lengths = ({} if kv_seqlen is None
               else dict(key_value_seq_lengths=kv_seqlen))
    out = jax.nn.dot_product_attention(q, k, v, mask=valid, scale=scale,
                                       implementation='cudnn', **lengths)
    return _zero_empty_rows(out, valid_used, key_lengths is not None), None

  fn, mask_types = _cudnn_fused_attention(with_lengths=kv_seqlen is not None)
  lengths = {}
  if kv_seqlen is not None:
    # As jax.nn.dot_product_attention does for key_value_seq_lengths.
    lengths = dict(q_seqlen=jnp.full((batch,), num_queries, jnp.int32),
                   kv_seqlen=kv_seqlen, mask_type=mask_types.PADDING)
  value_dim = v.shape[-1]
  # Σ_j p_j s_j = scale · q·(Σ_j p_j k_j): with K appended to the values the
  # same softmax weights produce k̄ = Σ_j p_j k_j next to the output.
  vk = jnp.concatenate([v, k], axis=-1)  # (B, Nk, H, Dv + D)
  result = fn(q, k, vk, mask=valid, scale=scale, return_residual=True,
              **lengths)
  if not (isinstance(result, (tuple, list)) and len(result) == 2):
    raise NotImplementedError(
        'The private cuDNN attention did not return (output, logsumexp); '
        "use implementation='pallas' or 'xla'.")
  out_vk, lse = result
  if lse.shape != (batch, num_heads, num_queries):
    raise NotImplementedError(
        f'Unexpected cuDNN logsumexp shape {lse.shape}; expected (B, H, Nq) '
        f'= {(batch, num_heads, num_queries)}.')
  out = out_vk[..., :value_dim]
  k_bar = out_vk[..., value_dim:].astype(jnp.float32)  # (B, Nq, H, D)
  s_bar = scale * jnp.einsum('bqhd,bqhd->bhq', q.astype(jnp.float32), k_bar,
                             precision=lax.Precision.HIGHEST)
  # lse is the natural-log logsumexp of scale·q·k (masked logits included as
  # a huge negative bias, i.e. weight 0).
  entropy = lse.astype(jnp.float32) - s_bar  # (B, H, Nq)
  if valid_used is not None:
    has_key = (valid_used[:, :, 0, 0, None] if key_lengths is not None
               else jnp.any(valid_used, axis=-1))  # (B, 1, 1) | (B, H|1, Nq)
    entropy = jnp.where(jnp.broadcast_to(has_key, entropy.shape), entropy,
                        0.0)
  return _zero_empty_rows(out, valid_used, key_lengths is not None), jnp.mean(
      entropy, axis=1)


def _zero_empty_rows(out, valid, per_row: bool = False):
  """Output 0 for queries with no valid key (cuDNN averages the masked).

  valid: a (B|1, H|1, Nq, Nk) mask, or with `per_row` a (B, 1, 1, 1) flag.
  """
  if valid is None:
    return out
  if per_row:
    return jnp.where(valid, out, jnp.zeros((), out.dtype))
  has_key = jnp.transpose(jnp.any(valid, axis=-1), (0, 2, 1))[..., None]
  return jnp.where(has_key, out, jnp.zeros((), out.dtype))
