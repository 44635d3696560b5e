"""Fréchet distance: Gaussians of known distance, and the direct formula.

The direct formula is the textbook one, computed here with NumPy only:
  d² = |μ_a − μ_b|² + tr Σ_a + tr Σ_b − 2 tr (Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2}
(Σ^{1/2} by a symmetric eigendecomposition); the module's nuclear-norm form
must agree with it to rounding, also when N < D (singular covariances).
"""

from absl.testing import absltest
import numpy as np

from toprovar_jax.metrics import frechet


def _psd_sqrt(m):
  w, v = np.linalg.eigh(m)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _direct(x, y):
  mu_a, ca = frechet.fit_gaussian(x)
  mu_b, cb = frechet.fit_gaussian(y)
  ra = _psd_sqrt(ca)
  cross = np.trace(_psd_sqrt(ra @ cb @ ra))
  return (np.sum((mu_a - mu_b) ** 2) + np.trace(ca) + np.trace(cb)
          - 2.0 * cross)


class FrechetTest(absltest.TestCase):

  def test_gaussians_of_known_distance(self):
    # Diagonal covariances: d² = |Δμ|² + Σ_i (σ_a,i − σ_b,i)² exactly.
    rng = np.random.default_rng(0)
    n = 40_000
    sd_a, sd_b = np.array([1.0, 2.0, 3.0]), np.array([2.0, 1.0, 3.0])
    mu_b = np.array([1.0, 2.0, 0.0])
    x = rng.normal(size=(n, 3)) * sd_a
    y = mu_b + rng.normal(size=(n, 3)) * sd_b
    known = np.sum(mu_b ** 2) + np.sum((sd_a - sd_b) ** 2)  # 5 + 2 = 7
    self.assertAlmostEqual(known, 7.0)
    self.assertAlmostEqual(frechet.frechet_distance(x, y), known, delta=0.1)

  def test_equals_the_direct_formula(self):
    rng = np.random.default_rng(1)
    for n_a, n_b, d in ((60, 50, 8), (5, 7, 12)):  # the second: N < D
      mix_a, mix_b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
      x = rng.normal(size=(n_a, d)) @ mix_a
      y = 0.5 + rng.normal(size=(n_b, d)) @ mix_b
      np.testing.assert_allclose(frechet.frechet_distance(x, y),
                                 _direct(x, y), rtol=1e-7)

  def test_a_shift_costs_its_squared_length(self):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 20))  # N < D: a rank-5 covariance
    shift = np.arange(20) / 10.0
    self.assertLess(frechet.frechet_distance(x, x), 1e-9)
    np.testing.assert_allclose(frechet.frechet_distance(x, x + shift),
                               np.sum(shift ** 2), rtol=1e-9)

  def test_too_few_samples_and_bad_shapes(self):
    x = np.zeros((1, 4))
    self.assertIsNone(frechet.frechet_distance(x, np.ones((3, 4))))
    with self.assertRaisesRegex(ValueError, "one width"):
      frechet.frechet_distance(np.zeros((3, 4)), np.zeros((3, 5)))
    with self.assertRaisesRegex(ValueError, "N >= 2"):
      frechet.fit_gaussian(x)


if __name__ == "__main__":
  absltest.main()
