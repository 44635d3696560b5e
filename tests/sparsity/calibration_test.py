"""The three calibration levels against direct NumPy on synthetic maps."""

import dataclasses
import math

from absl.testing import absltest
import numpy as np

from toprovar_jax import testing
from toprovar_jax.sparsity import calibration
from toprovar_jax.sparsity import codec
from toprovar_jax.sparsity import statistics

CFG = dataclasses.replace(testing.micro_infinity(), depth=4)
SIDES = (1, 2, 4, 6)


def images(rank1_layers, n=4, seed=0):
  """n images of per-scale (L, N_s) maps: rank-1 in `rank1_layers`, noise
  elsewhere; the noise layers' spread grows with the scale."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    img = []
    for s, side in enumerate(SIDES):
      maps = rng.uniform(1 - 0.15 * s, 1 + 0.15 * s, (4, side, side))
      for l in rank1_layers:
        maps[l] = np.outer(rng.uniform(1, 2, side), rng.uniform(1, 2, side))
      img.append(maps.reshape(4, -1))
    out.append(img)
  return out


def stats_of(imgs):
  st = statistics.EntropyStatistics(schedule=CFG.schedule, num_layers=4,
                                    rep_scale=3)
  for im in imgs:
    st.add_image(im)
  return st


class LevelsTest(absltest.TestCase):

  def test_pruning_depth_both_directions(self):
    rho = np.array([0.0, 0.2, 0.5, 0.3, 0.45])
    self.assertEqual(calibration.pruning_depth(rho, 0.4, "rise"), 2)
    self.assertEqual(calibration.pruning_depth(rho, 0.4, "fall"), 1)
    self.assertEqual(calibration.pruning_depth(rho, 0.4, "fall", 2), 3)
    self.assertIsNone(calibration.pruning_depth(rho, 0.6, "rise"))

  def test_largest_gap(self):
    ratios = np.array([1.1, 5.0, 1.3, 6.0, 1.2])
    self.assertAlmostEqual(calibration.largest_gap_threshold(ratios),
                           math.sqrt(1.3 * 5.0))
    # A rank-1 layer (inf, counted as 1e6) sits above the largest gap.
    self.assertAlmostEqual(
        calibration.largest_gap_threshold(np.array([2., 3., np.inf])),
        math.sqrt(3e6))

  def test_relevance_and_rounding(self):
    np.testing.assert_allclose(
        calibration.layer_relevance(np.array([1.0, 3.0, np.inf]), 0.5),
        [1.0, math.exp(-1.0), 0.0])
    self.assertEqual(calibration.round_keep(11.9, 36), 8)
    self.assertEqual(calibration.round_keep(12.0, 36), 16)
    self.assertEqual(calibration.round_keep(1.0, 36), 8)
    self.assertEqual(calibration.round_keep(35.0, 36), 32)
    self.assertEqual(calibration.round_keep(40.0, 36), 36)

  def test_bad_config_names_the_field(self):
    with self.assertRaisesRegex(ValueError, "calibration.direction"):
      calibration.CalibrationConfig(direction="up")
    with self.assertRaisesRegex(ValueError, "calibration.alpha_min"):
      calibration.CalibrationConfig(alpha_min=0.5, alpha_max=0.2)


class CalibrateTest(absltest.TestCase):

  def test_rank1_layer_is_global_and_k_matches_numpy(self):
    imgs = images(rank1_layers=(0,))
    cal = calibration.calibrate(stats_of(imgs), CFG, calibration.
                                CalibrationConfig(tau=0.3, alpha_max=0.8))
    self.assertEqual(cal.ratios[0], float("inf"))
    self.assertEqual(cal.global_layers, (0,))
    rho = [np.mean([np.mean(im[s].mean(0) < im[s].mean()) for im in imgs])
           for s in range(4)]
    np.testing.assert_allclose(cal.rho, rho)
    d = min(s for s in range(1, 4) if rho[s] >= 0.3)
    self.assertEqual(cal.depth, d)
    ratios = [np.median([np.divide(*np.linalg.svd(
        im[3][l].reshape(6, 6), compute_uv=False)[:2]) for im in imgs])
              for l in (1, 2, 3)]
    beta = math.log(2) / (cal.rho_star - 1)
    self.assertAlmostEqual(cal.beta, beta)
    # K_s at the last scale: mean over images and Detail layers of
    # Σ 1 - clip(0.8 φ R_l H/mean H, 0, 1), rounded to a multiple of 8.
    direct = np.mean([[np.sum(1 - np.clip(
        0.8 * 1.0 * math.exp(-beta * (r - 1)) * im[3][l] / im[3][l].mean(),
        0, 1)) for l, r in zip((1, 2, 3), ratios)] for im in imgs])
    self.assertAlmostEqual(np.mean(cal.expected_kept[3][1:]), direct,
                           delta=36 * 0.005)
    want_k = calibration.round_keep(direct, 36)
    sp = cal.plan.scales[3]
    if want_k < 36:
      self.assertEqual(sp.keep, want_k)
      self.assertEqual(sp.layers[0], "F")
      self.assertEqual((sp.probe_layer, sp.scorer, sp.entropy_from),
                       (0, "entropy", "probe"))
    for s in range(d):
      self.assertEqual(cal.plan.scales[s].layers, "FFFF")
    # The plan survives its JSON form.
    self.assertEqual(codec.plan_from_json(codec.plan_to_json(cal.plan)),
                     cal.plan)

  def test_detail_first_layer_uses_the_previous_probe(self):
    cal = calibration.calibrate(
        stats_of(images(rank1_layers=(2,))), CFG,
        calibration.CalibrationConfig(tau=0.0, alpha_max=0.5))
    self.assertEqual(cal.global_layers, (2,))
    self.assertEqual(cal.depth, 1)
    pruned = [s for s, sp in enumerate(cal.plan.scales) if "S" in sp.layers]
    self.assertNotEmpty(pruned)
    for s in pruned:
      sp = cal.plan.scales[s]
      self.assertEqual(sp.layers[2], "F")
      self.assertEqual((sp.scorer, sp.entropy_from), ("entropy", "previous"))
      self.assertEqual(cal.plan.scales[s - 1].probe_layer, 2)
    with self.assertRaisesRegex(ValueError, "calibration.entropy_from"):
      calibration.calibrate(stats_of(images(rank1_layers=(2,))), CFG,
                            calibration.CalibrationConfig(
                                tau=0.0, entropy_from="probe"))

  def test_no_crossing_gives_the_dense_plan_and_json(self):
    cal = calibration.calibrate(stats_of(images((0,))), CFG,
                                calibration.CalibrationConfig(tau=1.0))
    self.assertIsNone(cal.depth)
    self.assertTrue(all(sp.layers == "FFFF" and sp.probe_layer is None
                        for sp in cal.plan.scales))
    rec = cal.to_json()
    self.assertIsNone(rec["ratios"][0])
    self.assertTrue(rec["ratios_infinite"][0])
    self.assertEqual(rec["layers"], ["FFFF"] * 4)

  def test_almost_nothing_kept_skips_the_layer(self):
    # alpha 0.9 keeps 10 % (3.6 of 36 tokens), above the 5 % bar: S, K 8;
    # alpha_min = 1 keeps nothing: the Detail layers become X.
    cal = calibration.calibrate(
        stats_of(images((0,))), CFG,
        calibration.CalibrationConfig(tau=0.0, alpha_min=0.9, alpha_max=0.9,
                                      skip_below=0.05))
    np.testing.assert_allclose(cal.expected_kept[3][1:], 3.6)
    self.assertEqual(cal.plan.scales[3].layers, "FSSS")
    self.assertEqual(cal.plan.scales[3].keep, 8)
    cal = calibration.calibrate(
        stats_of(images((0,))), CFG,
        calibration.CalibrationConfig(tau=0.0, alpha_min=1.0, alpha_max=1.0))
    self.assertEqual(cal.plan.scales[3].layers, "FXXX")
    self.assertEqual(cal.plan.scales[3].keep, 36)
    self.assertEqual(cal.plan.scales[3].scorer, "none")


if __name__ == "__main__":
  absltest.main()
