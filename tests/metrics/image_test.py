"""PSNR / SSIM (the package's one definition) and image agreement.

SSIM is checked against an independent float64 reference (2-D Gaussian
window, scipy correlation); `reference_ssim` is shared with the tokenizer
evaluation test.
"""

import functools

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import scipy.signal

from toprovar_jax.metrics import image


def reference_ssim(x, y, data_range=1.0):
  """Independent SSIM: 2-D Gaussian window and scipy correlation, float64."""
  g = np.exp(-0.5 * ((np.arange(11) - 5.0) / 1.5) ** 2)
  window = np.outer(g, g) / np.outer(g, g).sum()
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  out = []
  for xi, yi in zip(np.asarray(x, np.float64), np.asarray(y, np.float64)):
    vals = []
    for c in range(xi.shape[-1]):
      f = functools.partial(scipy.signal.correlate2d, in2=window,
                            mode="valid")
      a, b = xi[..., c], yi[..., c]
      mu_a, mu_b = f(a), f(b)
      var_a, var_b = f(a * a) - mu_a ** 2, f(b * b) - mu_b ** 2
      cov = f(a * b) - mu_a * mu_b
      vals.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2)
                   / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))))
    out.append(np.mean(vals))
  return np.array(out)


_psnr = jax.jit(image.psnr, static_argnames="data_range")
_ssim = jax.jit(image.ssim)  # eager ssim dispatches ~100 small ops


class MetricsTest(absltest.TestCase):

  def test_psnr_golden(self):
    x = jnp.full((2, 16, 16, 3), 0.5)
    self.assertTrue(np.all(np.isinf(_psnr(x, x))))
    # +-0.1 checkerboard noise: MSE 0.01 -> exactly 20 dB at range 1, and
    # the same images in [-1, 1] (noise 0.2, range 2) give the same PSNR.
    sign = np.where(np.indices((16, 16)).sum(0) % 2, 1.0, -1.0)[..., None]
    y = x + 0.1 * sign
    np.testing.assert_allclose(_psnr(x, y), 20.0, atol=1e-4)
    np.testing.assert_allclose(
        _psnr(2 * x - 1, 2 * y - 1, data_range=2.0), 20.0,
        atol=1e-4)
    # Noise 0.05 -> 26.0206 dB (10 log10(1 / 0.0025)).
    np.testing.assert_allclose(_psnr(x, x + 0.05 * sign),
                               26.0206, atol=1e-3)
    # The host form of the same formula (float64, what image_similarity
    # reports), and its infinity at MSE 0.
    self.assertAlmostEqual(image.psnr_from_mse(0.0025, data_range=1.0),
                           26.020599913279625)
    with np.errstate(divide="ignore"):
      self.assertEqual(image.psnr_from_mse(np.float64(0.0), data_range=1.0),
                       np.inf)

  def test_ssim_golden(self):
    x = np.random.default_rng(0).uniform(0, 1, (2, 24, 20, 3)).astype(
        np.float32)
    np.testing.assert_allclose(_ssim(x, x), 1.0, atol=1e-6)
    # Constant images: the structure term is (0 + C2) / (0 + C2) = 1, so
    # SSIM = (2 * 0.5 * 0.6 + C1) / (0.5^2 + 0.6^2 + C1).
    c1 = 0.01 ** 2
    want = (2 * 0.5 * 0.6 + c1) / (0.25 + 0.36 + c1)
    got = _ssim(jnp.full((1, 16, 16, 1), 0.5),
                         jnp.full((1, 16, 16, 1), 0.6))
    np.testing.assert_allclose(got, want, rtol=1e-6)

  def test_ssim_matches_independent_reference(self):
    x = np.random.default_rng(1).uniform(0, 1, (2, 20, 24, 3))
    y = np.clip(x + np.random.default_rng(2).normal(0, 0.1, x.shape), 0, 1)
    got = _ssim(jnp.asarray(x, jnp.float32),
                         jnp.asarray(y, jnp.float32))
    np.testing.assert_allclose(got, reference_ssim(x, y), atol=2e-5)
    self.assertTrue(np.all(got < 0.99))
    with self.assertRaisesRegex(ValueError, "window"):
      _ssim(x[:, :8, :8], y[:, :8, :8])


class SimilarityTest(absltest.TestCase):

  def test_psnr_and_mean_abs_diff(self):
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[1] = 255
    sim = image.image_similarity(b, a)
    self.assertEqual(sim["identical_samples"], 1)
    self.assertEqual(sim["per_sample_psnr_db"][0], None)
    self.assertAlmostEqual(sim["per_sample_psnr_db"][1], 0.0)
    self.assertAlmostEqual(sim["psnr_db"], 10 * np.log10(2.0))
    self.assertAlmostEqual(sim["mean_abs_diff"], 127.5)
    self.assertIsNone(image.image_similarity(a, a)["psnr_db"])


if __name__ == "__main__":
  absltest.main()
