r"""FAE: a fused flash-attention forward that also returns attention entropy.

Shape letters: B batch, Nq queries, Nk keys (as stored; a KV cache may be
longer than the `kv_len` keys in use), H heads, D query/key head dim, Dv value
head dim, R rows (any leading shape of a logits block), Bk keys in one block.

The FAE recurrence (SPEC §4). For one query row with logits s_j over keys j,
carry a running max m, the normaliser ℓ = Σ exp(s − m) and the first moment
E = Σ exp(s − m)·(s − m). A new key block with block max m_b moves the max to
m' = max(m, m_b); with c = exp(m − m'):

    ℓ' = c·ℓ + Σ_b exp(s − m')
    E' = c·(E + (m − m')·ℓ) + Σ_b exp(s − m')·(s − m')
    O' = c·O + Σ_b exp(s − m')·v

and at the end H = log ℓ − E/ℓ, O = O/ℓ. The shift term (m − m')·ℓ is needed
because every earlier (s − m) also moves by (m − m') when the reference point
moves; the paper's pseudo-code drops it (and returns −H); both slips are
pinned by tests. Numerically the final form adds two non-negative terms
(log ℓ ≥ 0, −E/ℓ ≥ 0), so unlike lse − Σ p·s there is no cancellation.

The kernel works in base 2 (logits pre-multiplied by log2 e, `exp2`/`log2`,
as the Pallas/Triton flash-attention reference does, because exp2 is the
native GPU instruction); the recurrence is identical in any base and the
entropy is converted back to nats by one factor ln 2 at the end.

Layout follows cuDNN's BTNH: q (B, Nq, H, D), k (B, Nk, H, D),
v (B, Nk, H, Dv). One program per (query block, batch, head) loops over key
blocks. Key lengths that are not a multiple of the key block are handled by
a masked tail block (loads with `other=0`, logits masked out); the query
tail likewise with masked loads and stores, so neither q nor the KV cache is
ever padded or copied. On CPU the same kernel runs in Pallas interpret mode
(where out-of-bounds reads return NaN, so a missing tail mask shows up in the
tests as NaN instead of passing silently).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
import jax.numpy as jnp

_LOG2E = math.log2(math.e)
_LN2 = math.log(2.0)
_NEG_INF = float('-inf')

# Carry of the FAE recurrence: running max m, normaliser ℓ, first moment E.
FaeCarry = tuple[jax.Array, jax.Array, jax.Array]


def init_carry(shape: tuple[int, ...]) -> FaeCarry:
  """Returns the empty-row carry (m, ℓ, E) = (−inf, 0, 0), each `shape` f32."""
  return (jnp.full(shape, _NEG_INF, jnp.float32),
          jnp.zeros(shape, jnp.float32),
          jnp.zeros(shape, jnp.float32))


def online_entropy_update(
    carry: FaeCarry,
    s: jax.Array,
    valid: jax.Array | None = None,
    *,
    exp: Callable[[jax.Array], jax.Array] = jnp.exp,
    with_entropy: bool = True,
) -> tuple[FaeCarry, jax.Array, jax.Array]:
  """Folds one block of logits into the FAE carry (exact, SPEC §4).

  Shared by the Pallas kernel, the XLA path (one block = all keys) and the
  streaming-order tests, so all three run the same arithmetic.

  Args:
    carry: (m, ℓ, E), each (R,) float32; start from `init_carry`.
    s: (R, Bk) float32 logits of this block, in the base of `exp`.
    valid: optional bool, broadcastable to (R, Bk); False = masked out.
      Masked entries may hold any finite value.
    exp: jnp.exp (nats) or jnp.exp2 (logits in log2 units).
    with_entropy: False leaves E untouched (plain flash attention), so the
      kernel can be timed with and without the extra accumulator.

  Returns:
    (new carry, p (R, Bk) = exp(s − m') with masked entries 0,
    c (R,) = exp(m − m'), the factor that rescales any accumulator such as
    the output O).
  """
  m, l, e = carry
  s_for_max = s if valid is None else jnp.where(valid, s, _NEG_INF)
  m_new = jnp.maximum(m, jnp.max(s_for_max, axis=-1))
  # Rows with no valid key yet keep m' = −inf; use 0 as their reference point
  # so no −inf − (−inf) = NaN appears. Their ℓ and E stay exactly 0.
  m_ref = jnp.where(m_new == _NEG_INF, 0.0, m_new)
  t = s - m_ref[..., None]
  p = exp(t)
  if valid is not None:
    # A masked logit may exceed m_ref, so exp can overflow to inf: select,
    # don't multiply, so it never meets a 0.
    p = jnp.where(valid, p, 0.0)
  c = exp(m - m_ref)  # exp(−inf) = 0 for a row that was empty.
  # The shift (m − m') of every earlier term; ℓ = 0 for an empty row, where
  # (−inf)·0 would be NaN, hence the select.
  shift = jnp.where(m == _NEG_INF, 0.0, m - m_ref)
  l_new = c * l + jnp.sum(p, axis=-1)
  if with_entropy:
    e = c * (e + shift * l) + jnp.sum(p * t, axis=-1)
  return (m_new, l_new, e), p, c


def online_entropy_finalize(
    l: jax.Array,
    e: jax.Array,
    *,
    log: Callable[[jax.Array], jax.Array] = jnp.log,
) -> jax.Array:
  """H = log ℓ − E/ℓ (in the base of `log`); 0 for a row with no valid key."""
  safe_l = jnp.where(l > 0, l, 1.0)
  return jnp.where(l > 0, log(safe_l) - e / safe_l, 0.0)


def _fae_kernel(
    q_ref, k_ref, v_ref, *rest,
    scale_log2: float, block_q: int, block_k: int, num_queries: int,
    kv_len: int, has_mask: bool, has_key_mask: bool, with_entropy: bool,
    precision,
):
  """One (query block, batch, head) program: q/o (Nq, ·), k/v (Nk, ·)."""
  rest = list(rest)
  mask_ref = rest.pop(0) if has_mask else None
  key_mask_ref = rest.pop(0) if has_key_mask else None
  o_ref = rest.pop(0)
  ent_ref = rest.pop(0) if with_entropy else None

  q_start = pl.program_id(0) * block_q
  q_rows = q_start + jnp.arange(block_q)
  # Masks for the query tail only exist when Nq is not a block multiple
  # (static), so the common path has no extra selects.
  q_tail = num_queries % block_q != 0
  q_in_1d = (q_rows < num_queries) if q_tail else None
  q_in = q_in_1d[:, None] if q_tail else None
  q_slice = pl.ds(q_start, block_q)
  q = plgpu.load(q_ref.at[q_slice, :], mask=q_in,
                 other=0.0 if q_tail else None)

  def step(k_start, carry, tail):
    acc, m, l, e = carry
    k_slice = pl.ds(k_start, block_k)
    k_in = None
    if tail:
      k_in = (k_start + jnp.arange(block_k)) < kv_len  # (Bk,)
    # Out-of-range rows are loaded as 0 (not garbage): 0·NaN in p·v would
    # still be NaN.
    k_blk = plgpu.load(k_ref.at[k_slice, :],
                       mask=None if k_in is None else k_in[:, None],
                       other=None if k_in is None else 0.0)
    v_blk = plgpu.load(v_ref.at[k_slice, :],
                       mask=None if k_in is None else k_in[:, None],
                       other=None if k_in is None else 0.0)
    s = lax.dot_general(q, k_blk, (((1,), (1,)), ((), ())),
                        precision=precision,
                        preferred_element_type=jnp.float32)
    s = s * scale_log2
    valid = None if k_in is None else k_in[None, :]
    if has_mask:
      load_mask = None
      if q_tail or tail:
        load_mask = (q_in if q_in is not None else True) & (
            k_in[None, :] if k_in is not None else True)
      tile = plgpu.load(mask_ref.at[q_slice, k_slice], mask=load_mask,
                        other=0 if load_mask is not None else None)
      valid = (tile != 0) if valid is None else valid & (tile != 0)
    if has_key_mask:
      row = plgpu.load(key_mask_ref.at[k_slice], mask=k_in,
                       other=0 if k_in is not None else None)
      valid = (row != 0)[None, :] if valid is None else valid & (row != 0)
    (m, l, e), p, c = online_entropy_update(
        (m, l, e), s, valid, exp=jnp.exp2, with_entropy=with_entropy)
    pv = lax.dot_general(p.astype(v_blk.dtype), v_blk,
                         (((1,), (0,)), ((), ())), precision=precision,
                         preferred_element_type=jnp.float32)
    return c[:, None] * acc + pv, m, l, e

  num_full = kv_len // block_k
  m, l, e = init_carry((block_q,))
  carry = (jnp.zeros((block_q, v_ref.shape[-1]), jnp.float32), m, l, e)
  carry = lax.fori_loop(
      0, num_full,
      lambda j, c: step(j * block_k, c, tail=False), carry)
  if kv_len % block_k:
    # Peeled tail block: only it pays for the bounds mask. Its start is made
    # a traced value (0·program_id folds away) because a static slice that
    # overhangs the ref is rejected at trace time, while the masked load is
    # exactly what handles the overhang.
    tail_start = num_full * block_k + 0 * pl.program_id(0)
    carry = step(tail_start, carry, tail=True)
  acc, _, l, e = carry

  safe_l = jnp.where(l > 0, l, 1.0)
  out = jnp.where((l > 0)[:, None], acc / safe_l[:, None], 0.0)
  plgpu.store(o_ref.at[q_slice, :], out.astype(o_ref.dtype), mask=q_in)
  if with_entropy:
    ent = online_entropy_finalize(l, e, log=jnp.log2) * _LN2
    plgpu.store(ent_ref.at[q_slice], ent, mask=q_in_1d)


def _pick_block(block: int, length: int) -> int:
  """Largest power of two ≤ `block` not needlessly above `length` (≥ 16).

  Triton needs power-of-two tiles and dot operands of at least 16 per side;
  a 1-query scale must not compute 128 rows.
  """
  if block < 16 or block & (block - 1):
    raise ValueError(f'block sizes must be powers of two >= 16, got {block}.')
  return min(block, max(16, pl.next_power_of_2(length)))


@functools.partial(
    jax.jit,
    static_argnames=('scale', 'kv_len', 'return_entropy', 'block_q',
                     'block_k', 'num_warps', 'num_stages', 'interpret',
                     'precision'))
def fae_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None = None,
    key_mask: jax.Array | None = None,
    *,
    scale: float = 1.0,
    kv_len: int | None = None,
    return_entropy: bool = True,
    block_q: int = 64,
    block_k: int = 64,
    num_warps: int | None = None,
    num_stages: int = 2,
    interpret: bool = False,
    precision=None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Fused attention forward with per-head softmax entropy (FAE).

  Args:
    q: (B, Nq, H, D) queries, bf16/f16/f32.
    k: (B, Nc, H, D) keys; only the first `kv_len` are used.
    v: (B, Nc, H, Dv) values, same dtype as k.
    mask: optional (Bm, Hm, Nq, Nc) with Bm ∈ {1, B}, Hm ∈ {1, H}; nonzero =
      attend. Any integer or bool dtype (int8 is what the kernel reads).
    key_mask: optional (B, Nc); nonzero = key is valid.
    scale: softmax scale applied to q·k (1.0 for cosine attention with the
      scale folded into q).
    kv_len: static number of keys in use (a prefix of the cache); default Nc.
    return_entropy: False drops the E accumulator and the entropy output
      (plain flash attention: the baseline for the FAE overhead).
    block_q: query tile (power of two); clipped for short Nq.
    block_k: key tile (power of two). Nc need not be a multiple.
    num_warps: Triton warps; default 4 for D ≤ 64, else 8.
    num_stages: Triton software-pipelining stages.
    interpret: run in Pallas interpret mode (CPU tests).
    precision: lax precision of the two matmuls (None = default).

  Returns:
    out (B, Nq, H, Dv) in q.dtype, and with `return_entropy` entropy
    (B, H, Nq) float32 in nats (0 for a query with no valid key, whose
    output is also 0).
  """
  batch, num_queries, num_heads, head_dim = q.shape
  cache_len = k.shape[1]
  value_dim = v.shape[-1]
  kv_len = cache_len if kv_len is None else kv_len
  if not 0 < kv_len <= cache_len:
    raise ValueError(f'kv_len={kv_len} must be in [1, {cache_len}].')
  if not interpret:
    for name, d in (('D', head_dim), ('Dv', value_dim)):
      if d < 16 or d & (d - 1):
        # Triton tiles are powers of two; pad heads outside if this is hit.
        raise ValueError(f'{name}={d} must be a power of two >= 16 on GPU.')
  bq = _pick_block(block_q, num_queries)
  bk = _pick_block(block_k, kv_len)
  num_warps = num_warps or (4 if head_dim <= 64 else 8)

  in_specs = [
      pl.BlockSpec((None, num_queries, None, head_dim),
                   lambda i, b, h: (b, 0, h, 0)),
      pl.BlockSpec((None, cache_len, None, head_dim),
                   lambda i, b, h: (b, 0, h, 0)),
      pl.BlockSpec((None, cache_len, None, value_dim),
                   lambda i, b, h: (b, 0, h, 0)),
  ]
  operands = [q, k, v]
  if mask is not None:
    mb, mh = mask.shape[0], mask.shape[1]
    in_specs.append(pl.BlockSpec(
        (None, None, num_queries, cache_len),
        lambda i, b, h: (b if mb > 1 else 0, h if mh > 1 else 0, 0, 0)))
    # int8, not bool: i1 pointers are not a safe Triton load type.
    operands.append(mask.astype(jnp.int8))
  if key_mask is not None:
    in_specs.append(pl.BlockSpec((None, cache_len), lambda i, b, h: (b, 0)))
    operands.append(key_mask.astype(jnp.int8))

  kernel = functools.partial(
      _fae_kernel, scale_log2=scale * _LOG2E, block_q=bq, block_k=bk,
      num_queries=num_queries, kv_len=kv_len, has_mask=mask is not None,
      has_key_mask=key_mask is not None, with_entropy=return_entropy,
      precision=precision)
  out_specs = [pl.BlockSpec((None, num_queries, None, value_dim),
                            lambda i, b, h: (b, 0, h, 0))]
  out_shape = [jax.ShapeDtypeStruct(
      (batch, num_queries, num_heads, value_dim), q.dtype)]
  if return_entropy:
    # (B, H, Nq): each program writes one contiguous run of its head's row.
    out_specs.append(
        pl.BlockSpec((None, None, num_queries), lambda i, b, h: (b, h, 0)))
    out_shape.append(
        jax.ShapeDtypeStruct((batch, num_heads, num_queries), jnp.float32))
  outs = pl.pallas_call(
      kernel,
      grid=(pl.cdiv(num_queries, bq), batch, num_heads),
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=plgpu.CompilerParams(num_warps=num_warps,
                                           num_stages=num_stages),
      interpret=interpret,
      name='fae_forward',
  )(*operands)
  return tuple(outs) if return_entropy else outs[0]
