"""Token scorers and the static-K kept set, on hand-computed numbers."""

from absl.testing import absltest
import jax.numpy as jnp
import numpy as np

from toprovar_jax.sparsity import selection


class SelectionTest(absltest.TestCase):

  def test_top_k_sorted_keeps_the_largest_in_raster_order(self):
    scores = jnp.array([[0.1, 0.9, 0.5, 0.7], [4.0, 3.0, 2.0, 1.0]])
    idx = selection.top_k_sorted(scores, 2)
    self.assertEqual(idx.dtype, jnp.int32)
    np.testing.assert_array_equal(idx, [[1, 3], [0, 1]])

  def test_frequency_scores(self):
    # Tokens (0, 0), (2, 0), (1, 3): mean (1, 1); ||x - mean||^2 = 2, 2, 4.
    x = jnp.array([[[0.0, 0.0], [2.0, 0.0], [1.0, 3.0]]])
    np.testing.assert_allclose(selection.frequency_scores(x), [[2.0, 2.0,
                                                                  4.0]])

  def test_entropy_keeps_the_lowest(self):
    h = jnp.array([[2.0, 0.5, 1.0, 3.0]])
    np.testing.assert_array_equal(
        selection.top_k_sorted(selection.entropy_keep_scores(h), 2),
        [[1, 2]])

  def test_select_shares_the_cond_choice_or_not(self):
    scores = jnp.array([[0.0, 1.0, 2.0], [5.0, 4.0, 3.0]])  # cond, uncond
    np.testing.assert_array_equal(
        selection.select(scores, 1, share_cfg=True, batch=1), [[2], [2]])
    np.testing.assert_array_equal(
        selection.select(scores, 1, share_cfg=False, batch=1), [[2], [0]])
    # Without guidance (R = B) there is nothing to share.
    np.testing.assert_array_equal(
        selection.select(scores, 1, share_cfg=True, batch=2), [[2], [0]])

  def test_resize_entropy_is_an_area_mean(self):
    h = jnp.arange(16, dtype=jnp.float32).reshape(1, 16)  # a 4x4 map
    got = selection.resize_entropy(h, (4, 4), (2, 2))
    np.testing.assert_allclose(got, [[2.5, 4.5, 10.5, 12.5]])


if __name__ == "__main__":
  absltest.main()
