"""Fidelity to a reference: each number against its one definition."""

from absl.testing import absltest
import jax.numpy as jnp
import numpy as np

from toprovar_jax.metrics import fidelity
from toprovar_jax.metrics import frechet
from toprovar_jax.metrics import image
from toprovar_jax.metrics import lpips

_SHAPE = (3, 32, 32, 3)  # AlexNet's smallest input; one compile per file


class FidelityTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.params = lpips.load_params()
    rng = np.random.default_rng(0)
    cls.ref = rng.integers(0, 256, _SHAPE, dtype=np.uint8)
    noise = rng.integers(-40, 41, _SHAPE)
    cls.img = np.clip(cls.ref.astype(int) + noise, 0, 255).astype(np.uint8)

  def test_identical_images(self):
    f = fidelity.fidelity(self.params, self.ref, self.ref, batch_size=2)
    self.assertEqual(f["ssim"], 1.0)
    self.assertIsNone(f["psnr"])  # +inf: JSON null
    self.assertEqual(f["lpips"], 0.0)
    self.assertLess(f["fd_alexnet"], 1e-9)
    self.assertEqual(f["identical_images"], 3)

  def test_each_number_is_its_definition(self):
    # batch_size 2 splits the 3 images: batches must not change anything.
    f = fidelity.fidelity(self.params, self.img, self.ref, batch_size=2)
    x, y = jnp.asarray(self.img), jnp.asarray(self.ref)
    ssim = np.asarray(image.ssim(x, y, data_range=255.0))
    np.testing.assert_allclose(f["per_image_ssim"], ssim, rtol=1e-6)
    self.assertAlmostEqual(f["ssim"], float(ssim.mean()), places=6)
    mse = np.mean((self.img.astype(float) - self.ref) ** 2)
    self.assertAlmostEqual(f["psnr"], 10 * np.log10(255.0 ** 2 / mse))
    dist = np.asarray(lpips.lpips(self.params, x / 127.5 - 1, y / 127.5 - 1))
    np.testing.assert_allclose(f["per_image_lpips"], dist, rtol=1e-5)
    self.assertGreater(f["lpips"], 0.0)
    fa = fidelity.pooled_features(self.params, self.img)
    fb = fidelity.pooled_features(self.params, self.ref)
    np.testing.assert_allclose(f["fd_alexnet"],
                               frechet.frechet_distance(fa, fb), rtol=1e-4)
    self.assertGreater(f["fd_alexnet"], 0.0)
    self.assertEqual(f["identical_images"], 0)

  def test_pooled_features_are_position_means_of_the_taps(self):
    feats = fidelity.pooled_features(self.params, self.ref, batch_size=2)
    self.assertEqual(feats.shape, (3, fidelity.FEATURE_DIM))
    taps = lpips.features(self.params, jnp.asarray(self.ref) / 127.5 - 1)
    want = np.concatenate([np.asarray(t).mean(axis=(1, 2)) for t in taps], -1)
    np.testing.assert_allclose(feats, want, rtol=1e-5, atol=1e-7)

  def test_rejects_mismatched_inputs(self):
    with self.assertRaisesRegex(ValueError, "differ in shape"):
      fidelity.fidelity(self.params, self.ref[:2], self.ref)
    with self.assertRaisesRegex(ValueError, "images: expected uint8"):
      fidelity.fidelity(self.params, self.ref.astype(np.float32), self.ref)


if __name__ == "__main__":
  absltest.main()
