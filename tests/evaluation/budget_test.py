"""Budget mode on synthetic statistics with a scripted SSIM.

The SSIM of a plan is a made-up decreasing function of its FLOP reduction,
so the cheapest plan meeting a target is known by brute force; the binary
search must find it in about log2(candidates) generations. (The real SSIM
evaluator runs in tests/experiments/calibrate_test.py.)
"""

import math

from absl.testing import absltest
import numpy as np

from tests.sparsity import calibration_test as synth
from toprovar_jax import flops as flops_lib
from toprovar_jax.evaluation import budget
from toprovar_jax.sparsity import calibration

CFG = synth.CFG
DENSE = flops_lib.dense_flops(CFG, text_tokens=8).total


def fake_ssim(plan):
  return 1.0 - 0.2 * (DENSE / flops_lib.plan_flops(
      plan, CFG, text_tokens=8).total - 1.0)


class BudgetTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.stats = synth.stats_of(synth.images(rank1_layers=(0,)))
    self.grid = budget.SearchGrid(taus=(0.0, 0.3), global_counts=(1, 2, 3),
                                  alpha_mins=(0.0, 0.2),
                                  alpha_maxs=(0.3, 0.6, 1.0, 2.0))

  def cands(self):
    return budget.candidates(self.stats, CFG, calibration.CalibrationConfig(),
                             self.grid, text_tokens=8, name="b")

  def test_cut_for_globals(self):
    r = np.array([1.5, 9.0, 2.0, np.inf])
    self.assertAlmostEqual(budget.cut_for_globals(r, 1), math.sqrt(9e6))
    self.assertAlmostEqual(budget.cut_for_globals(r, 2), math.sqrt(18.0))
    self.assertIsNone(budget.cut_for_globals(r, 4))
    self.assertIsNone(budget.cut_for_globals(np.array([2., 2., 3.]), 2))

  def test_candidates_are_distinct_sorted_and_not_dense(self):
    cands = self.cands()
    self.assertGreater(len(cands), 3)
    flops = [c.flops for c in cands]
    self.assertEqual(flops, sorted(flops))
    self.assertLess(flops[-1], DENSE)
    keys = {budget._key(c.calibration.plan) for c in cands}
    self.assertLen(keys, len(cands))
    # Equal plans from several grid points are one candidate.
    self.assertGreater(sum(len(c.points) for c in cands), len(cands))

  def test_search_finds_the_cheapest_plan_meeting_the_target(self):
    cands = self.cands()
    ssims = [fake_ssim(c.calibration.plan) for c in cands]
    target = float(np.median(ssims))
    want = min((c.flops for c, v in zip(cands, ssims) if v >= target))
    calls = []
    best = budget.search(cands, lambda p: calls.append(p) or fake_ssim(p),
                         target=target)
    self.assertEqual(best.flops, want)
    self.assertLessEqual(len(calls), math.ceil(math.log2(len(cands))) + 1)
    rec = budget.frontier_record(cands, best, dense_flops=DENSE,
                                 target=target)
    self.assertLen(rec["plans"], len(calls))
    chosen = [p for p in rec["plans"] if p["chosen"]]
    self.assertLen(chosen, 1)
    self.assertAlmostEqual(chosen[0]["flop_speedup"], DENSE / want)
    self.assertTrue(all(p["meets_target"] == (p["ssim"] >= target)
                        for p in rec["plans"]))

  def test_max_evals_and_an_unreachable_target(self):
    calls = []
    cal, rec = budget.budget_plan(
        self.stats, CFG, calibration.CalibrationConfig(),
        lambda p: calls.append(p) or fake_ssim(p), target=1.01, max_evals=2,
        text_tokens=8, grid=self.grid)
    self.assertLen(calls, 2)
    self.assertIsNone(rec["chosen"])
    self.assertEqual(cal.plan.name, "calibrated_ssim1.01")
    self.assertIsNone(cal.depth)
    self.assertTrue(all(sp.layers == "FFFF" for sp in cal.plan.scales))

  def test_known_plans_are_reused_and_the_cheapest_known_wins(self):
    # A first search on these statistics; its record feeds a second one.
    target = float(np.median([fake_ssim(c.calibration.plan)
                              for c in self.cands()]))
    first = self.cands()
    best1 = budget.search(first, fake_ssim, target=target)
    rec = budget.frontier_record(first, best1, dense_flops=DENSE,
                                 target=target)
    known = budget.known_ssim(rec)
    self.assertLen(known, len(rec["plans"]))
    # The same target again: nothing is generated, the same plan is chosen.
    calls = []
    again = budget.search(self.cands(), lambda p: calls.append(p) or 0.0,
                          target=target, known=known)
    self.assertEqual(calls, [])
    self.assertEqual(again.flops, best1.flops)
    self.assertTrue(again.reused)
    # Non-monotone SSIM: the cheapest candidate scores high but the
    # bisection never visits it; known, it wins over what the search finds.
    cands = self.cands()
    cheapest = budget.plan_key(cands[0].calibration.plan)
    calls = []
    best = budget.search(cands, lambda p: calls.append(p) or 0.99,
                         target=0.9, known={cheapest: 0.95}, max_evals=1)
    self.assertIs(best, cands[0])
    self.assertLen(calls, 1)
    rec = budget.frontier_record(cands, best, dense_flops=DENSE, target=0.9)
    self.assertEqual([p["reused"] for p in rec["plans"]][0], True)
    # Without it the search returns a costlier plan.
    worse = budget.search(self.cands(), lambda p: 0.99, target=0.9,
                          max_evals=1)
    self.assertGreater(worse.flops, cands[0].flops)


if __name__ == "__main__":
  absltest.main()
