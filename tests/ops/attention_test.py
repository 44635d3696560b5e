"""Tests of `toprovar_jax.ops.attention` and the FAE kernel (SPEC §4).

What is pinned: 'xla' output and entropy against the naive fp32 softmax
(`entropy_reference`) on shapes whose key counts are multiples of no block
size; masks (block-causal, key padding, fully masked rows, garbage in masked
or out-of-cache keys); the FAE streaming recurrence is exact and independent
of the order in which key blocks arrive, the paper's pseudo-code slips (no
shift term, −H) are caught and the Pallas kernel in interpret mode (the same
kernel code that compiles for the GPU) agrees: tests/ops/fae_pallas_test.py;
the cuDNN [V | K] entropy algebra with an XLA stand-in for the private cuDNN
call.

Measured on CPU (float32 inputs cosine-normalised, logit scale 8, shapes up
to Nq=256, Nk=1000, D=128): against the fp32 reference, 'xla' output
max |Δ| ≤ 2.8e-7 and entropy relative error ≤ 1.7e-7; Pallas (interpret)
≤ 2.1e-7 and ≤ 2.1e-7; against a float64 oracle both ≤ 3.5e-7 and ≤ 1.4e-7.
Asserted: 1e-5 absolute on outputs (the brief) and 1e-5 relative on entropy
(SPEC allows 1e-3), relative to max(H, 1e-2).

Dimension letters: B batch, Nq queries, Nk keys, H heads, D head dim.
"""

import math
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
from jax._src.cudnn import fused_attention_stablehlo
from jax._src.nn import functions as nn_functions
import jax.numpy as jnp
import numpy as np

from toprovar_jax.ops import attention as attention_lib

_OUT_ATOL = 1e-5  # The brief's bound for the 'xla' parity path.
_ENT_RTOL = 1e-5  # SPEC allows 1e-3; float32 gives ~1e-7.
_LOGIT_SCALE = 8.0  # Typical learned cosine-attention scale (exp of ~2).

# (B, Nq, Nk, H, D): Nk = 37, 129, 521 are multiples of no block size.
_SHAPES = (
    ('q1_k37_d16', 2, 1, 37, 2, 16),
    ('q7_k37_d64', 1, 7, 37, 2, 64),
    ('q36_k129_d128', 2, 36, 129, 2, 128),
    ('q100_k521_d64', 1, 100, 521, 2, 64),
    ('q64_k1_d16', 1, 64, 1, 2, 16),
)


_STATIC = ('scale', 'implementation', 'return_entropy', 'precision',
           'query_chunk', 'kv_len', 'block_sizes')
# Compile time dominates this file on a 2-core CPU: one jit per call
# signature (not op-by-op dispatch), and the lowest backend optimisation
# level, which compiles these small programs 4-10x faster. It changes how
# hard the CPU backend optimises, not the float32 math under test;
# `test_golden_entropy` (with_jit) keeps the default pipeline covered, and
# the errors quoted above were measured with default options.
_FAST_COMPILE = {'xla_backend_optimization_level': 0}
_attention = jax.jit(attention_lib.attention, static_argnames=_STATIC,
                     compiler_options=_FAST_COMPILE)
_reference = jax.jit(attention_lib.entropy_reference, static_argnames='scale',
                     compiler_options=_FAST_COMPILE)


def _fresh_attention():
  """A new jit cache, for tests that patch what is looked up at trace time."""
  return jax.jit(attention_lib.attention, static_argnames=_STATIC,
                 compiler_options=_FAST_COMPILE)


def _qkv(batch, num_q, num_k, heads, dim, *, seed=0, dtype=jnp.float32):
  """Cosine-attention-like inputs: unit q·k rows, q scaled by the logit scale."""
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((batch, num_q, heads, dim))
  k = rng.standard_normal((batch, num_k, heads, dim))
  v = rng.standard_normal((batch, num_k, heads, dim))
  q *= _LOGIT_SCALE / np.linalg.norm(q, axis=-1, keepdims=True)
  k /= np.linalg.norm(k, axis=-1, keepdims=True)
  return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def _block_causal_mask(patch_nums):
  """(N, N) bool: a token sees every token of its own and earlier scales."""
  level = np.concatenate([np.full(p * p, i) for i, p in enumerate(patch_nums)])
  return jnp.asarray(level[None, :] <= level[:, None])


def _assert_entropy_close(actual, expected, rtol=_ENT_RTOL):
  # Relative to max(H, 1e-2): a near-one-hot row has H → 0, where a relative
  # bound would test float32 resolution rather than the formula.
  chex.assert_trees_all_close(actual, expected, rtol=rtol, atol=rtol * 1e-2)


class XlaAttentionTest(parameterized.TestCase):

  @parameterized.named_parameters(*_SHAPES)
  def test_matches_naive_softmax(self, batch, num_q, num_k, heads, dim):
    q, k, v = _qkv(batch, num_q, num_k, heads, dim)
    ref_out, ref_ent = _reference(q, k, v)
    out, ent = _attention(q, k, v, return_entropy=True)
    chex.assert_shape(out, (batch, num_q, heads, dim))
    chex.assert_shape(ent, (batch, num_q))
    self.assertEqual(ent.dtype, jnp.float32)
    chex.assert_trees_all_close(out, ref_out, atol=_OUT_ATOL, rtol=0)
    _assert_entropy_close(ent, ref_ent)

  def test_plain_call_returns_output_only(self):
    q, k, v = _qkv(1, 5, 37, 2, 16)
    out = _attention(q, k, v)
    with_ent, _ = _attention(q, k, v, return_entropy=True)
    chex.assert_trees_all_equal(out, with_ent)
    # 'auto' is the parity path off-GPU.
    self.assertEqual(attention_lib._auto_implementation(q, True), 'xla')

  def test_cross_attention_scale_and_value_dim(self):
    # Cross-attention: 1/√D softmax scale; Dv ≠ D is allowed.
    q, k, _ = _qkv(2, 9, 30, 2, 64)
    v = jnp.asarray(np.random.default_rng(1).standard_normal((2, 30, 2, 32)),
                    jnp.float32)
    scale = 1 / math.sqrt(64)
    ref_out, ref_ent = _reference(q, k, v, scale=scale)
    out, ent = _attention(q, k, v, scale=scale, return_entropy=True)
    chex.assert_trees_all_close(out, ref_out, atol=_OUT_ATOL, rtol=0)
    _assert_entropy_close(ent, ref_ent)

  @chex.variants(with_jit=True, without_jit=True)
  def test_golden_entropy(self):
    # Key 1 has logit ln 3, the others 0. Query 0 sees keys {0, 1}:
    # p = (1/4, 3/4), H = ln 4 − (3/4) ln 3. Query 1 sees {0, 2, 3, 4}:
    # uniform, H = ln 4. Positive: the paper's pseudo-code returns −H.
    d = 16
    q = jnp.zeros((1, 2, 1, d)).at[0, :, 0, 0].set(1.0)
    k = jnp.zeros((1, 5, 1, d)).at[0, 1, 0, 0].set(math.log(3.0))
    mask = jnp.array([[True, True, False, False, False],
                      [True, False, True, True, True]])

    @self.variant
    def entropy(q, k, mask):
      return attention_lib.attention(q, k, k, mask=mask,
                                     return_entropy=True)[1]

    expected = jnp.array([[math.log(4.0) - 0.75 * math.log(3.0),
                           math.log(4.0)]])
    chex.assert_trees_all_close(entropy(q, k, mask), expected, atol=1e-6)

  def test_query_chunking_matches_unchunked(self):
    # Scales 1², 2², 3², 5² → 39 queries, chunks of 16 (padded last chunk).
    mask = _block_causal_mask((1, 2, 3, 5))
    q, k, v = _qkv(2, 39, 39, 2, 16)
    full = _attention(q, k, v, mask=mask, return_entropy=True)
    chunked = _attention(q, k, v, mask=mask, return_entropy=True,
                         query_chunk=16)
    chex.assert_trees_all_close(chunked, full, atol=1e-6, rtol=0)

  def test_block_causal_mask(self):
    mask = _block_causal_mask((1, 2, 3, 4))  # 30 tokens
    q, k, v = _qkv(2, 30, 30, 2, 16, seed=3)
    ref_out, ref_ent = _reference(q, k, v, mask=mask)
    out, ent = _attention(q, k, v, mask=mask, return_entropy=True)
    chex.assert_trees_all_close(out, ref_out, atol=_OUT_ATOL, rtol=0)
    _assert_entropy_close(ent, ref_ent)
    # The first token attends to itself only: H = 0 exactly (up to rounding).
    chex.assert_trees_all_close(ent[:, 0], jnp.zeros(2), atol=1e-6)

  def test_key_padding_with_fully_masked_batch_element(self):
    q, k, v = _qkv(3, 6, 37, 2, 64, seed=4)
    lengths = jnp.array([37, 11, 0])  # batch 2 has no valid key at all.
    key_mask = jnp.arange(37)[None] < lengths[:, None]
    # Large finite garbage in padded keys: masking must select, not multiply.
    garbage = jnp.where(key_mask[..., None, None], 0.0, 1e4)
    k, v = k + garbage, v + garbage
    ref_out, ref_ent = _reference(q, k, v, key_mask=key_mask)
    out, ent = _attention(q, k, v, key_mask=key_mask, return_entropy=True)
    chex.assert_tree_all_finite((out, ent))
    chex.assert_trees_all_close(out, ref_out, atol=_OUT_ATOL, rtol=0)
    _assert_entropy_close(ent, ref_ent)
    chex.assert_trees_all_equal(out[2], jnp.zeros_like(out[2]))
    chex.assert_trees_all_equal(ent[2], jnp.zeros_like(ent[2]))

  def test_key_lengths_are_the_prefix_key_mask(self):
    q, k, v = _qkv(3, 6, 37, 2, 64, seed=4)
    lengths = jnp.array([37, 11, 0], jnp.int32)
    key_mask = jnp.arange(37)[None] < lengths[:, None]
    ref_out, ref_ent = _attention(q, k, v, key_mask=key_mask,
                                  return_entropy=True)
    out, ent = _attention(q, k, v, key_lengths=lengths, return_entropy=True)
    chex.assert_trees_all_equal((out, ent), (ref_out, ref_ent))
    chex.assert_trees_all_equal(out[2], jnp.zeros_like(out[2]))

  def test_per_batch_and_per_head_masks(self):
    q, k, v = _qkv(2, 8, 21, 2, 16, seed=5)
    rng = np.random.default_rng(6)
    key_mask = jnp.asarray(rng.random((2, 21)) < 0.7)
    for shape in ((2, 1, 8, 21), (1, 2, 8, 21)):
      mask = jnp.asarray(rng.random(shape) < 0.6)
      mask = mask.at[..., 3, :].set(False)  # a fully masked query row
      ref_out, ref_ent = _reference(q, k, v, mask=mask, key_mask=key_mask)
      out, ent = _attention(q, k, v, mask=mask, key_mask=key_mask,
                            return_entropy=True)
      chex.assert_tree_all_finite((out, ent))
      chex.assert_trees_all_close(out, ref_out, atol=_OUT_ATOL, rtol=0)
      _assert_entropy_close(ent, ref_ent)

  def test_kv_len_prefix_ignores_rest_of_cache(self):
    q, k, v = _qkv(1, 9, 64, 2, 16, seed=7)
    k_nan = k.at[:, 37:].set(jnp.nan)
    v_nan = v.at[:, 37:].set(jnp.nan)
    ref = _reference(q, k[:, :37], v[:, :37])
    got = _attention(q, k_nan, v_nan, kv_len=37, return_entropy=True)
    chex.assert_trees_all_close(got, ref, atol=_OUT_ATOL, rtol=0)

  @parameterized.named_parameters(
      ('kv37', 37, None), ('kv53_chunked', 53, 16), ('kv95', 95, None))
  def test_kv_len_equals_truncated_keys(self, kv_len, query_chunk):
    # A 96-row cache whose rows past kv_len hold large finite garbage (as a
    # KV buffer that later scales fill), a block-causal-like mask and key
    # padding spanning all 96 columns; kv_len a multiple of no block size.
    q, k, v = _qkv(2, 21, 96, 2, 16, seed=12)
    k = k.at[:, kv_len:].set(50.0)
    v = v.at[:, kv_len:].set(-1e4)
    rng = np.random.default_rng(12)
    mask = jnp.asarray(rng.random((21, 96)) < 0.7).at[:, 0].set(True)
    mask = mask.at[4].set(False)  # a query with no valid key
    key_mask = jnp.stack([jnp.arange(96) != 5, jnp.arange(96) % 3 != 0])
    got = _attention(q, k, v, mask=mask, key_mask=key_mask, kv_len=kv_len,
                     query_chunk=query_chunk, return_entropy=True)
    cut = _attention(q, k[:, :kv_len], v[:, :kv_len], mask=mask[:, :kv_len],
                     key_mask=key_mask[:, :kv_len], query_chunk=query_chunk,
                     return_entropy=True)
    ref_out, ref_ent = _reference(q, k[:, :kv_len], v[:, :kv_len],
                                  mask=mask[:, :kv_len],
                                  key_mask=key_mask[:, :kv_len])
    chex.assert_trees_all_close(got, cut, atol=1e-6, rtol=0)
    chex.assert_trees_all_close(got[0], ref_out, atol=_OUT_ATOL, rtol=0)
    _assert_entropy_close(got[1], ref_ent)
    chex.assert_trees_all_equal(got[1][:, 4], jnp.zeros((2,)))
    # Without kv_len the garbage rows would count.
    full = _attention(q, k, v, mask=mask, key_mask=key_mask,
                      return_entropy=True)
    if kv_len < 95:
      self.assertGreater(float(jnp.abs(full[0] - ref_out).max()), 1.0)

  def test_bfloat16_inputs(self):
    q, k, v = _qkv(1, 16, 129, 2, 64, seed=8, dtype=jnp.bfloat16)
    ref_out, ref_ent = _reference(q, k, v)
    out, ent = _attention(q, k, v, return_entropy=True)
    self.assertEqual(out.dtype, jnp.bfloat16)
    # p is rounded to bf16 before p·v (as in a flash kernel); logits and the
    # entropy stay f32, so only the output sees bf16 rounding.
    chex.assert_trees_all_close(out.astype(jnp.float32), ref_out, atol=2e-2)
    _assert_entropy_close(ent, ref_ent)

  @parameterized.named_parameters(
      # numpy, not jnp: no device arrays at import time.
      ('mask_dtype', dict(mask=np.ones((4, 6), np.int32))),
      ('mask_shape', dict(mask=np.ones((4, 5), bool))),
      ('mask_batch', dict(mask=np.ones((3, 1, 4, 6), bool))),
      ('key_mask_shape', dict(key_mask=np.ones((2, 5), bool))),
      ('implementation', dict(implementation='flash')),
      ('kv_len', dict(kv_len=7)),
      ('key_lengths_shape', dict(key_lengths=np.array([3], np.int32))),
      ('key_lengths_and_key_mask', dict(key_lengths=np.array([3, 6]),
                                        key_mask=np.ones((2, 6), bool))),
  )
  def test_bad_arguments_raise(self, kwargs):
    q, k, v = _qkv(2, 4, 6, 2, 16)
    with self.assertRaises(ValueError):
      _attention(q, k, v, **kwargs)


def _emulated_cudnn(query, key, value, bias=None, mask=None, *, scale=1.0,
                    return_residual=False, **unused):
  """XLA stand-in for the private cuDNN call: (out, lse (B, H, Nq))."""
  del bias, unused
  s = scale * jnp.einsum('bqhd,bkhd->bhqk', query.astype(jnp.float32),
                         key.astype(jnp.float32),
                         precision=jax.lax.Precision.HIGHEST)
  if mask is not None:
    # cuDNN turns a bool mask into a large negative bias, not −inf.
    s = s + jnp.where(mask, 0.0, -2.0 ** 41)
  lse = jax.nn.logsumexp(s, axis=-1)
  out = jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(s, axis=-1),
                   value.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST).astype(query.dtype)
  return (out, lse) if return_residual else out


def _emulated_cudnn_lengths(query, key, value, bias=None, mask=None,
                            q_seqlen=None, kv_seqlen=None, *, scale=1.0,
                            mask_type=None, return_residual=False, **unused):
  """XLA stand-in for the private cuDNN call that honours the padding mask.

  Checks what cuDNN checks of the lengths (int32, (B,)) and records the
  arguments in `_CALLS`.
  """
  del unused
  _CALLS.append(dict(q_seqlen=q_seqlen, kv_seqlen=kv_seqlen,
                     mask_type=mask_type))
  batch, num_q, num_k = query.shape[0], query.shape[1], key.shape[1]
  padding = mask_type in (fused_attention_stablehlo.MaskType.PADDING,
                          fused_attention_stablehlo.MaskType.PADDING_CAUSAL)
  if padding:
    for t in (q_seqlen, kv_seqlen):
      assert t.dtype == jnp.int32 and t.shape == (batch,), (t.dtype, t.shape)
    ok = ((jnp.arange(num_q)[None, :, None] < q_seqlen[:, None, None])
          & (jnp.arange(num_k)[None, None, :] < kv_seqlen[:, None, None]))
    ok = ok[:, None]  # (B, 1, Nq, Nk)
    mask = ok if mask is None else mask & ok
  return _emulated_cudnn(query, key, value, bias, mask, scale=scale,
                         return_residual=return_residual)


_CALLS = []


class CudnnRouteTest(absltest.TestCase):
  """The [V | K] algebra and guards, with cuDNN replaced by XLA (CPU)."""

  def _kv_len_inputs(self):
    # A 64-row cache, 29 rows in use; garbage (finite, as cuDNN needs)
    # after them. Batch 1's only valid keys lie past kv_len: it must come out
    # as a row with no valid key (output 0, entropy 0).
    q, k, v = _qkv(2, 12, 64, 2, 64, seed=13)
    k = k.at[:, 29:].set(3.0)
    v = v.at[:, 29:].set(-100.0)
    key_mask = jnp.stack([jnp.arange(64) != 3, jnp.arange(64) >= 40])
    ref = _reference(q, k[:, :29], v[:, :29], key_mask=key_mask[:, :29])
    return q, k, v, key_mask, ref

  def test_kv_len_plain_uses_key_value_seq_lengths(self):
    # The public jax.nn.dot_product_attention runs for real (its argument
    # checks included); only its cuDNN kernel call is emulated.
    q, k, v, key_mask, (ref_out, _) = self._kv_len_inputs()
    _CALLS.clear()
    with mock.patch.object(nn_functions, 'cudnn_dot_product_attention',
                           _emulated_cudnn_lengths):
      out = _fresh_attention()(q, k, v, key_mask=key_mask, kv_len=29,
                               implementation='cudnn')
    self.assertLen(_CALLS, 1)
    self.assertEqual(_CALLS[0]['mask_type'],
                     fused_attention_stablehlo.MaskType.PADDING)
    chex.assert_trees_all_close(out, ref_out, atol=_OUT_ATOL, rtol=0)
    chex.assert_trees_all_equal(out[1], jnp.zeros_like(out[1]))

  def test_kv_len_entropy_passes_padding_lengths(self):
    q, k, v, key_mask, (ref_out, ref_ent) = self._kv_len_inputs()
    _CALLS.clear()
    with mock.patch.object(fused_attention_stablehlo, 'dot_product_attention',
                           _emulated_cudnn_lengths):
      out, ent = _fresh_attention()(q, k, v, key_mask=key_mask, kv_len=29,
                                    implementation='cudnn',
                                    return_entropy=True)
    self.assertLen(_CALLS, 1)
    self.assertEqual(_CALLS[0]['mask_type'],
                     fused_attention_stablehlo.MaskType.PADDING)
    chex.assert_trees_all_close(out, ref_out, atol=_OUT_ATOL, rtol=0)
    _assert_entropy_close(ent, ref_ent, rtol=1e-4)
    chex.assert_trees_all_equal(ent[1], jnp.zeros_like(ent[1]))
    chex.assert_trees_all_equal(out[1], jnp.zeros_like(out[1]))

  def test_key_lengths_are_cudnn_padding_lengths(self):
    # Text padding as lengths: cuDNN's padding mask (no bias), min'd with a
    # kv_len (row 0 must match 17 valid keys, not 29); a row with length 0
    # gets output 0 and entropy 0. With a bias
    # mask as well the lengths become a key mask (one mechanism only).
    q, k, v, _, _ = self._kv_len_inputs()
    lengths = jnp.array([17, 0], jnp.int32)
    key_mask = jnp.arange(64)[None] < lengths[:, None]
    ref_out, ref_ent = _reference(q, k[:, :29], v[:, :29],
                                  key_mask=key_mask[:, :29])
    for return_entropy, target in ((False, nn_functions),
                                   (True, fused_attention_stablehlo)):
      name = ('dot_product_attention' if return_entropy
              else 'cudnn_dot_product_attention')
      _CALLS.clear()
      with mock.patch.object(target, name, _emulated_cudnn_lengths):
        res = _fresh_attention()(q, k, v, key_lengths=lengths, kv_len=29,
                                 implementation='cudnn',
                                 return_entropy=return_entropy)
      self.assertLen(_CALLS, 1)
      self.assertEqual(_CALLS[0]['mask_type'],
                       fused_attention_stablehlo.MaskType.PADDING)
      out = res[0] if return_entropy else res
      chex.assert_trees_all_close(out, ref_out, atol=_OUT_ATOL, rtol=0)
      chex.assert_trees_all_equal(out[1], jnp.zeros_like(out[1]))
      if return_entropy:
        _assert_entropy_close(res[1], ref_ent, rtol=1e-4)
        chex.assert_trees_all_equal(res[1][1], jnp.zeros_like(res[1][1]))
    mask = jnp.ones((12, 64), bool).at[:, 5].set(False)
    ref_out = _reference(q, k, v, mask=mask, key_mask=key_mask)[0]
    _CALLS.clear()
    with mock.patch.object(nn_functions, 'cudnn_dot_product_attention',
                           _emulated_cudnn_lengths):
      out = _fresh_attention()(q, k, v, mask=mask, key_lengths=lengths,
                               implementation='cudnn')
    self.assertNotEqual(_CALLS[0]['mask_type'],
                        fused_attention_stablehlo.MaskType.PADDING)
    chex.assert_trees_all_close(out, ref_out, atol=_OUT_ATOL, rtol=0)

  def test_kv_len_entropy_needs_the_length_arguments(self):
    q, k, v, _, _ = self._kv_len_inputs()
    with mock.patch.object(fused_attention_stablehlo, 'dot_product_attention',
                           _emulated_cudnn):
      with self.assertRaisesRegex(NotImplementedError, 'kv_seqlen'):
        _fresh_attention()(q, k, v, kv_len=29, implementation='cudnn',
                           return_entropy=True)

  def test_entropy_from_logsumexp_and_kbar(self):
    q, k, v = _qkv(2, 12, 37, 2, 64, seed=11)
    key_mask = jnp.stack([jnp.ones(37, bool), jnp.zeros(37, bool)])
    with mock.patch.object(fused_attention_stablehlo, 'dot_product_attention',
                           _emulated_cudnn):
      out, ent = _fresh_attention()(q, k, v, key_mask=key_mask,
                                    implementation='cudnn', return_entropy=True)
    ref_out, ref_ent = _reference(q, k, v, key_mask=key_mask)
    chex.assert_trees_all_close(out, ref_out, atol=_OUT_ATOL, rtol=0)
    # lse − s̄ cancels ~|s| ≤ 8 in float32: still far inside SPEC's 1e-3.
    _assert_entropy_close(ent, ref_ent, rtol=1e-4)
    chex.assert_trees_all_equal(ent[1], jnp.zeros_like(ent[1]))

  def test_missing_private_api_raises_clearly(self):
    def no_residual(query, key, value, *, scale=1.0):
      del key, value, scale
      return query

    q, k, v = _qkv(1, 4, 8, 2, 16)
    with mock.patch.object(fused_attention_stablehlo, 'dot_product_attention',
                           no_residual):
      with self.assertRaisesRegex(NotImplementedError, "'pallas'"):
        _fresh_attention()(q, k, v, implementation='cudnn', return_entropy=True)


if __name__ == '__main__':
  absltest.main()
