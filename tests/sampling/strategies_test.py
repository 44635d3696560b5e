"""Guidance and sampling rules of the official samplers, and per-row keys."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax.sampling import strategies


class StrategiesTest(parameterized.TestCase):

  def test_top_k_keeps_ties_like_torch(self):
    logits = jnp.array([[1.0, 3.0, 3.0, 0.5, 2.0]])
    out = strategies.top_k_top_p_filter(logits, top_k=2, top_p=0.0)
    np.testing.assert_array_equal(np.isfinite(np.asarray(out)),
                                  [[False, True, True, False, False]])

  def test_top_p_golden(self):
    # softmax([0, 1, 2, 3]) = [.032, .087, .237, .644]; ascending cumsum
    # [.032, .119, .356, 1.0]. top_p 0.7 removes entries with cum <= 0.3.
    logits = jnp.log(jnp.array([[0.032, 0.087, 0.237, 0.644]]))
    out = strategies.top_k_top_p_filter(logits, top_k=0, top_p=0.7)
    np.testing.assert_array_equal(np.isfinite(np.asarray(out)),
                                  [[False, False, True, True]])
    # Always keeps the largest, even at top_p -> 0+.
    out = strategies.top_k_top_p_filter(logits, top_k=0, top_p=1e-6)
    np.testing.assert_array_equal(np.isfinite(np.asarray(out)),
                                  [[False, False, False, True]])

  def test_top_p_unsorted_vocabulary_order(self):
    logits = jnp.log(jnp.array([[0.644, 0.032, 0.237, 0.087]]))
    out = strategies.top_k_top_p_filter(logits, top_k=0, top_p=0.7)
    np.testing.assert_array_equal(np.isfinite(np.asarray(out)),
                                  [[True, False, True, False]])

  def test_greedy_is_argmax(self):
    logits = jax.random.normal(jax.random.key(0), (3, 7, 11))
    np.testing.assert_array_equal(
        strategies.sample(jax.random.key(1), logits, top_k=1, top_p=0.0),
        jnp.argmax(logits, -1))

  def test_guidance_formulas(self):
    cond, unc = jnp.full((1, 1, 2), 2.0), jnp.full((1, 1, 2), 1.0)
    both = jnp.concatenate([cond, unc])
    # VAR ramp at si = 9 of 10 with cfg 1.5: t = 1.5 -> 2.5*2 - 1.5*1 = 3.5.
    np.testing.assert_allclose(strategies.guide_var(both, 1.5, 9, 10), 3.5)
    np.testing.assert_allclose(strategies.guide_var(both, 1.5, 0, 10), 2.0)
    # Infinity: (3*2 - 2*1) / 0.5 = 8.
    np.testing.assert_allclose(strategies.guide_infinity(both, 3.0, 0.5), 8.0)

  def test_sample_rows_draws_each_row_from_its_own_key(self):
    logits = jnp.zeros((4, 6, 50))  # uniform: every draw is the key's
    keys = jax.random.split(jax.random.key(0), 4)
    rows = strategies.sample_rows(keys, logits, top_k=0, top_p=0.0)
    self.assertEqual(rows.shape, (4, 6))
    for b in range(4):
      np.testing.assert_array_equal(
          rows[b], strategies.sample(keys[b], logits[b], top_k=0, top_p=0.0))
    # Reordering the rows reorders the draws, nothing else.
    perm = np.array([2, 0, 3, 1])
    np.testing.assert_array_equal(
        strategies.sample_rows(keys[perm], logits[perm], top_k=0, top_p=0.0),
        rows[perm])

  def test_scale_keys_fold_in_the_scale(self):
    keys = jax.random.split(jax.random.key(3), 2)
    got = strategies.scale_keys(keys, 5)
    for b in range(2):
      np.testing.assert_array_equal(
          jax.random.key_data(got[b]),
          jax.random.key_data(jax.random.fold_in(keys[b], 5)))


if __name__ == "__main__":
  absltest.main()
