"""Plans on other official schedules: mapped, re-made, or refused."""

from absl.testing import absltest

from tests.sparsity import small_plans
from toprovar_jax.models import config as config_lib
from toprovar_jax.sparsity import named
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import reschedule
from toprovar_jax.sparsity import validation

_2B = small_plans.INFINITY_2B


class RescheduleTest(absltest.TestCase):

  def test_mapped_keep(self):
    self.assertEqual(reschedule.mapped_keep(1024, 1024, 1014), 1014)
    self.assertEqual(reschedule.mapped_keep(408, 4096, 4056), 404)
    self.assertEqual(reschedule.mapped_keep(1, 4096, 16), 1)

  def test_paper_plan_maps_to_another_ratio_at_1m(self):
    paper = named.load_plan("infinity_2b_paper", _2B)
    cfg = config_lib.at_resolution(_2B, 1.5, "1M")
    plan = named.load_plan("infinity_2b_paper", cfg)
    self.assertEqual(plan.schedule, cfg.schedule)
    self.assertEqual(plan.name, paper.name)
    for s, (a, b) in enumerate(zip(paper.scales, plan.scales)):
      self.assertEqual(a.layers, b.layers)
      self.assertEqual(a.probe_layer, b.probe_layer)
      n_from = _2B.tokens_per_scale[s]
      n_to = cfg.tokens_per_scale[s]
      self.assertEqual(b.keep, n_to if a.keep == n_from else
                       round(a.keep * n_to / n_from))
    # The 64x64 scale keeps 408 of 4096; 78x52 = 4056 tokens keep 404.
    self.assertEqual((paper.scales[12].keep, plan.scales[12].keep),
                     (408, 404))
    validation.validate_plan(plan, cfg)

  def test_other_budget_is_refused_naming_both_schedules(self):
    cfg = config_lib.at_resolution(_2B, 1.5, "0.25M")
    with self.assertRaisesWithLiteralMatch(
        plan_lib.PlanError,
        "plan 'infinity_2b_paper', field 'schedule': was made for h/w 1 at "
        "1M (13 scales, last 64x64), but model 'infinity_2b' runs h/w 1.5 "
        "at 0.25M (10 scales, last 39x26); a plan maps only onto a "
        "schedule with as many scales (another h/w at the same pixel "
        "budget). Make one for this schedule (calibration), or use "
        "'dense', 'fastvar' or 'skipvar_skipK', which are built for any "
        "schedule"):
      named.load_plan("infinity_2b_paper", cfg)

  def test_builtin_plans_are_remade(self):
    cfg = config_lib.at_resolution(_2B, 0.333, "0.60M")
    for spec in ("dense", "fastvar", "skipvar_skip2_uncond8"):
      self.assertEqual(named.load_plan(spec, cfg).schedule, cfg.schedule)


if __name__ == "__main__":
  absltest.main()
