"""Running entropy statistics against direct NumPy on synthetic maps."""

import tempfile

from absl.testing import absltest
import numpy as np

from toprovar_jax.sparsity import statistics

SIDES = (1, 2, 4, 8)
DEPTH = 3


def synthetic_image(rng, rank1_layers=(0,)):
  """Per scale an (L, N_s) entropy map: rank-1 maps in `rank1_layers`,
  uniform noise in the others."""
  out = []
  for side in SIDES:
    maps = rng.uniform(0.5, 1.5, (DEPTH, side, side))
    for l in rank1_layers:
      u, v = rng.uniform(0.5, 1.5, side), rng.uniform(0.5, 1.5, side)
      maps[l] = np.outer(u, v)
    out.append(maps.reshape(DEPTH, -1))
  return out


def make_stats(images, **kw):
  st = statistics.EntropyStatistics(
      schedule=tuple((s, s) for s in SIDES), num_layers=DEPTH, rep_scale=3,
      **kw)
  for img in images:
    st.add_image(img)
  return st


class HelpersTest(absltest.TestCase):

  def test_layer_ratio(self):
    self.assertEqual(statistics.layer_ratio(np.outer([1., 2, 3], [4., 5])),
                     float("inf"))
    m = np.random.default_rng(0).uniform(size=(5, 4))
    sv = np.linalg.svd(m, compute_uv=False)
    self.assertAlmostEqual(statistics.layer_ratio(m), sv[0] / sv[1])
    self.assertAlmostEqual(statistics.layer_ratio(np.diag([3.0, 1.0])), 3.0)
    self.assertEqual(statistics.layer_ratio(np.ones((1, 4))), float("inf"))

  def test_low_entropy_ratio_uses_the_layer_mean(self):
    # Layer means per token: 1, 2, 3, 6 -> mean 3: two tokens below it.
    ent = np.array([[0., 2, 2, 6], [2., 2, 4, 6]])
    self.assertEqual(statistics.low_entropy_ratio(ent), 0.5)

  def test_normalised_entropy(self):
    np.testing.assert_allclose(
        statistics.normalised_entropy(np.array([[1., 3.], [0., 0.]])),
        [[0.5, 1.5], [1.0, 1.0]])

  def test_find_rep_scale(self):
    sched = [(s, s) for s in (1, 2, 4, 6, 8, 12, 16)]
    self.assertEqual(statistics.find_rep_scale(sched, 12), 5)
    self.assertEqual(statistics.find_rep_scale(sched, 7), 4)  # tie: larger
    self.assertEqual(statistics.find_rep_scale(sched, 100), 6)


class StatisticsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.images = [synthetic_image(rng) for _ in range(5)]
    self.stats = make_stats(self.images, num_samples=2)

  def test_sums_equal_direct_numpy(self):
    st, imgs = self.stats, self.images
    rho = [np.mean([np.mean(im[s].mean(0) < im[s].mean()) for im in imgs])
           for s in range(len(SIDES))]
    np.testing.assert_allclose(st.rho(), rho)
    np.testing.assert_allclose(
        st.mean_entropy(), np.mean([[e.mean(1) for e in im] for im in imgs],
                                   axis=0))
    rep = np.stack([im[3].reshape(DEPTH, 8, 8) for im in imgs])
    np.testing.assert_allclose(st.mean_maps(), rep.mean(0))
    direct = [[np.divide(*np.linalg.svd(m, compute_uv=False)[:2])
               for m in img] for img in rep]
    want = np.median(np.array(direct), axis=0)
    self.assertEqual(st.median_ratios()[0], float("inf"))  # rank-1 layer
    np.testing.assert_allclose(st.median_ratios()[1:], want[1:])
    self.assertEqual(st.samples.shape, (2, DEPTH, 1 + 4 + 16 + 64))
    np.testing.assert_array_equal(st.samples[1],
                                  np.concatenate(imgs[1], axis=1))

  def direct_kept(self, s, l, coef, a0, a1):
    return np.mean([np.sum(1 - np.clip(
        a0 + (a1 - a0) * coef * im[s][l] / im[s][l].mean(), 0, 1))
                    for im in self.images])

  def test_expected_kept_is_exact_where_the_gate_is_linear(self):
    # alpha in [0.1, 0.3], coef 0.5: a + d*coef*H < 1 for every H < 9.
    got = self.stats.expected_kept(3, 1, 0.5, 0.1, 0.3)
    self.assertAlmostEqual(got, self.direct_kept(3, 1, 0.5, 0.1, 0.3),
                           places=9)

  def test_expected_kept_with_clipping_is_within_a_bin(self):
    got = self.stats.expected_kept(3, 2, 1.0, 0.0, 1.0)
    # Only tokens in the bin holding the clip point can be off, each by at
    # most half a bin of P_keep.
    tol = 64 * 0.5 * (4.0 / 400)
    self.assertAlmostEqual(got, self.direct_kept(3, 2, 1.0, 0.0, 1.0),
                           delta=tol)

  def test_batches_fold_in_like_images(self):
    batch = [np.stack([im[s] for im in self.images[:3]], axis=1)
             for s in range(len(SIDES))]
    st = make_stats([])
    st.add_batch([np.concatenate([b, b[:, :1]], axis=1) for b in batch],
                 rows=3)  # a padding row, not folded in
    ref = make_stats(self.images[:3])
    self.assertEqual(st.num_images, 3)
    np.testing.assert_array_equal(st.hist_count, ref.hist_count)
    np.testing.assert_allclose(st.rho_sum, ref.rho_sum)

  def test_save_and_load_round_trip(self):
    with tempfile.TemporaryDirectory() as d:
      self.stats.fingerprint = "model=x"
      with open(f"{d}/s.npz", "wb") as f:
        f.write(self.stats.to_bytes())
      back = statistics.EntropyStatistics.load(f"{d}/s.npz")
    self.assertEqual(back.num_images, 5)
    self.assertEqual(back.schedule, self.stats.schedule)
    self.assertEqual(back.fingerprint, "model=x")
    for name in ("rho_sum", "ratios", "hist_count", "hist_sum", "samples"):
      np.testing.assert_array_equal(getattr(back, name),
                                    getattr(self.stats, name))
    with self.assertRaisesRegex(ValueError, "from another run"):
      statistics.check_fingerprint(back, "model=y")

  def test_bad_maps_are_refused(self):
    img = synthetic_image(np.random.default_rng(1))
    img[2] = img[2].copy()
    img[2][0, 0] = np.nan
    with self.assertRaisesRegex(ValueError, r"entropy\[2\]: expected a "
                                r"finite \(3, 16\) map"):
      make_stats([img])
    with self.assertRaisesRegex(ValueError, "no calibration images"):
      make_stats([]).rho()


if __name__ == "__main__":
  absltest.main()
