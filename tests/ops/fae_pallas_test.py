"""The FAE pieces (`ops.fae_pallas`): the online entropy update against the
closed form in any block order, and the Pallas kernel (interpret mode)."""

import functools
import math

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from tests.ops import attention_test as fixtures
from toprovar_jax.ops import fae_pallas

_FAST_COMPILE = fixtures._FAST_COMPILE
_OUT_ATOL = fixtures._OUT_ATOL
_assert_entropy_close = fixtures._assert_entropy_close
_attention = fixtures._attention
_block_causal_mask = fixtures._block_causal_mask
_qkv = fixtures._qkv
_reference = fixtures._reference

_fae = jax.jit(fae_pallas.fae_attention,
               static_argnames=('block_q', 'block_k', 'interpret',
                                'return_entropy'),
               compiler_options=_FAST_COMPILE)


def _closed_form_entropy(s):
  """float64 H = logsumexp(s) − Σ p s per row; s (R, N) numpy."""
  s = np.asarray(s, np.float64)
  m = s.max(axis=-1, keepdims=True)
  w = np.exp(s - m)
  p = w / w.sum(axis=-1, keepdims=True)
  return (m[:, 0] + np.log(w.sum(axis=-1))) - (p * s).sum(axis=-1)


def _paper_update(carry, s, valid, *, exp=jnp.exp):
  """The paper's pseudo-code recurrence: E' = c·E + Σ p·t (no shift term).

  Masking is handled as in ours, so the shift term is the only difference.
  """
  m, l, e = carry
  m_new = jnp.maximum(m, jnp.max(jnp.where(valid, s, -jnp.inf), axis=-1))
  m_ref = jnp.where(m_new == -jnp.inf, 0.0, m_new)
  t = s - m_ref[:, None]
  p = jnp.where(valid, exp(t), 0.0)
  c = exp(m - m_ref)
  return (m_new, c * l + p.sum(-1), c * e + (p * t).sum(-1)), p, c


_exp2_update = functools.partial(fae_pallas.online_entropy_update,
                                 exp=jnp.exp2)


@functools.partial(jax.jit, static_argnames=('update_fn', 'log'),
                   compiler_options=_FAST_COMPILE)
def _fold(blocks, valid, *, update_fn, log=jnp.log):
  """Streams key blocks (nb, R, W) with validity (nb, R, W); returns H (R,)."""

  def body(carry, block):
    carry, _, _ = update_fn(carry, *block)
    return carry, None

  carry, _ = jax.lax.scan(body, fae_pallas.init_carry(blocks.shape[1:2]),
                          (blocks, valid))
  return fae_pallas.online_entropy_finalize(carry[1], carry[2], log=log)


def _stream(s, bounds, order, *, update_fn=fae_pallas.online_entropy_update,
            log=jnp.log):
  """Folds blocks [bounds[i], bounds[i+1]) of s (R, N) in `order`.

  Blocks of different sizes are right-padded to one width with
  valid = False, so every order reuses one compiled scan.
  """
  width = max(b - a for a, b in zip(bounds[:-1], bounds[1:]))
  blocks, valid = [], []
  for i in order:
    blk = s[:, bounds[i]:bounds[i + 1]]
    pad = width - blk.shape[1]
    blocks.append(np.pad(blk, ((0, 0), (0, pad))))
    valid.append(np.pad(np.ones(blk.shape, bool), ((0, 0), (0, pad))))
  return _fold(jnp.asarray(np.stack(blocks), jnp.float32),
               jnp.asarray(np.stack(valid)), update_fn=update_fn, log=log)


class StreamingFormulaTest(parameterized.TestCase):

  def _logits(self, seed):
    # Wide logits with a few spikes so that the running max changes often.
    rng = np.random.default_rng(seed)
    s = 3.0 * rng.standard_normal((8, 300))
    spikes = rng.integers(0, 300, size=(8, 4))
    np.put_along_axis(s, spikes, 15.0 + 5.0 * rng.random((8, 4)), axis=-1)
    return s

  def _random_blocks(self, rng):
    cuts = np.sort(rng.choice(np.arange(1, 300), size=11, replace=False))
    return [0, *cuts.tolist(), 300]

  @parameterized.parameters(0, 1, 2)
  def test_order_independent_and_exact(self, seed):
    s = self._logits(seed)
    expected = _closed_form_entropy(s)
    rng = np.random.default_rng(100 + seed)
    bounds = self._random_blocks(rng)
    results = [_stream(s, bounds, rng.permutation(len(bounds) - 1))
               for _ in range(6)]
    for h in results:
      _assert_entropy_close(h, expected)
      _assert_entropy_close(h, results[0])

  def test_base_two_recurrence_gives_nats_after_ln2(self):
    # The kernel runs the recurrence on log2-e-scaled logits with exp2.
    s = self._logits(3)
    bounds = self._random_blocks(np.random.default_rng(3))
    h = _stream(s * math.log2(math.e), bounds, range(len(bounds) - 1),
                update_fn=_exp2_update, log=jnp.log2)
    _assert_entropy_close(h * math.log(2.0), _closed_form_entropy(s))

  def test_masked_blocks_and_empty_prefix(self):
    # The first block is fully masked (m stays −inf): no NaN, and masked
    # entries (even huge ones) contribute nothing.
    s = self._logits(4)
    valid = np.random.default_rng(4).random(s.shape) < 0.5
    valid[:, :50] = False
    s_garbage = np.where(valid, s, 1e30).reshape(8, 6, 50).transpose(1, 0, 2)
    h = _fold(jnp.asarray(s_garbage, jnp.float32),
              jnp.asarray(valid.reshape(8, 6, 50).transpose(1, 0, 2)),
              update_fn=fae_pallas.online_entropy_update)
    expected = [_closed_form_entropy(s[r:r + 1, valid[r]])[0]
                for r in range(8)]
    _assert_entropy_close(h, np.array(expected))

  def test_paper_pseudocode_slip_is_detected(self):
    s = self._logits(5)
    expected = _closed_form_entropy(s)
    bounds = self._random_blocks(np.random.default_rng(5))
    # Blocks in ascending order of their max: the running max changes at
    # almost every block, which is exactly where the shift term matters.
    block_max = [s[:, a:b].max() for a, b in zip(bounds[:-1], bounds[1:])]
    order = np.argsort(block_max)
    ours = _stream(s, bounds, order)
    paper = _stream(s, bounds, order, update_fn=_paper_update)
    _assert_entropy_close(ours, expected)
    rel_err = np.max(np.abs(np.asarray(paper) - expected) / expected)
    self.assertGreater(rel_err, 1e-1)  # Far outside SPEC's 1e-3.
    # With a single block the max never changes and the slip is invisible,
    # which is why the order test above streams many blocks.
    one_block = _stream(s, [0, 300], [0], update_fn=_paper_update)
    _assert_entropy_close(one_block, expected)
    # The paper's last line negates H; entropy is never negative.
    self.assertTrue(np.all(np.asarray(ours) >= 0))


class PallasInterpretTest(parameterized.TestCase):
  """The FAE kernel in interpret mode; few small shapes (compiles are slow).

  Interpret mode reads NaN past the end of a ref, so a missing tail mask
  fails these tests rather than passing by luck.
  """

  @parameterized.named_parameters(
      # (B, Nq, Nk, H, D, block_q, block_k): query and key tails, several
      # full key blocks, and the 1-query scale with a 128-wide head.
      ('q7_k37_d16', 2, 7, 37, 2, 16, 16, 16),
      ('q100_k129_d64', 1, 100, 129, 2, 64, 32, 32),
  )
  def test_matches_naive_softmax(self, batch, num_q, num_k, heads, dim,
                                 block_q, block_k):
    q, k, v = _qkv(batch, num_q, num_k, heads, dim, seed=num_k)
    ref_out, ref_ent = _reference(q, k, v)
    out, ent_bhq = _fae(
        q, k, v, block_q=block_q, block_k=block_k, interpret=True)
    chex.assert_shape(ent_bhq, (batch, heads, num_q))
    chex.assert_trees_all_close(out, ref_out, atol=_OUT_ATOL, rtol=0)
    _assert_entropy_close(jnp.mean(ent_bhq, axis=1), ref_ent)

  def test_without_entropy_is_plain_flash_attention(self):
    # The E-free variant is the baseline for timing the FAE overhead on GPU.
    q, k, v = _qkv(2, 7, 37, 2, 16, seed=37)
    out = _attention(q, k, v, implementation='pallas', block_sizes=(16, 16))
    ref_out = _reference(q, k, v)[0]
    chex.assert_trees_all_close(out, ref_out, atol=_OUT_ATOL, rtol=0)

  def test_public_entry_bf16_single_query(self):
    # Through `attention` with its D=128 default tiles (clipped to 16 rows).
    q, k, v = _qkv(2, 1, 521, 2, 128, seed=9, dtype=jnp.bfloat16)
    ref_out, ref_ent = _reference(q, k, v)
    out, ent = _attention(q, k, v, implementation='pallas', return_entropy=True)
    chex.assert_trees_all_close(out.astype(jnp.float32), ref_out, atol=2e-2)
    _assert_entropy_close(ent, ref_ent)

  def test_masks_and_cache_prefix(self):
    # Block-causal mask over scales 1², 2², 4² (21 tokens) inside a 32-row
    # cache whose unused rows are NaN, plus key padding with one batch
    # element fully masked.
    mask = _block_causal_mask((1, 2, 4))
    mask = jnp.pad(mask, ((0, 0), (0, 11)))  # columns of the whole cache
    q, k, v = _qkv(2, 21, 32, 2, 16, seed=10)
    k = k.at[:, 21:].set(jnp.nan)
    v = v.at[:, 21:].set(jnp.nan)
    key_mask = jnp.stack([jnp.arange(32) != 2, jnp.zeros(32, bool)])
    out, ent = _attention(
        q, k, v, mask=mask, key_mask=key_mask, kv_len=21,
        implementation='pallas', return_entropy=True, block_sizes=(16, 16))
    ref_out, ref_ent = _reference(
        q, k[:, :21], v[:, :21], mask=mask[:, :21], key_mask=key_mask[:, :21])
    chex.assert_tree_all_finite((out, ent))
    chex.assert_trees_all_close(out, ref_out, atol=_OUT_ATOL, rtol=0)
    _assert_entropy_close(ent, ref_ent)
    chex.assert_trees_all_equal(ent[1], jnp.zeros_like(ent[1]))


if __name__ == "__main__":
  absltest.main()
