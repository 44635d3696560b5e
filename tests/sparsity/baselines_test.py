"""FastVAR and SkipVAR as plans (SPEC §6)."""

from absl.testing import absltest

from tests.sparsity import small_plans
from toprovar_jax.models import config as config_lib
from toprovar_jax.sparsity import baselines
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import validation


_2B = small_plans.INFINITY_2B


class BaselinesTest(absltest.TestCase):

  def test_fastvar_2b(self):
    plan = baselines.fastvar_plan(_2B)
    validation.validate_plan(plan, _2B)
    self.assertEqual(plan.exit_scale, 11)
    self.assertLen(plan.scales, 11)
    sparse = "FFF" + "S" * 25 + "FFFF"  # blocks 3..27 of 32
    self.assertEqual(plan.scales[9].keep, 615)  # 1024 - int(409.6)
    self.assertEqual(plan.scales[10].keep, 800)
    for s in (9, 10):
      sp = plan.scales[s]
      self.assertEqual(sp.layers, sparse)
      self.assertEqual((sp.scorer, sp.select, sp.share_cfg, sp.restore,
                        sp.cache_from),
                       ("frequency", "sublayer", False, "cached", 8))
    self.assertEqual(plan.scales[8].layers, "F" * 32)  # the 24x24 cache

  def test_fastvar_scales_layer_range(self):
    self.assertEqual(baselines.fastvar_layer_range(32), (3, 28))
    self.assertEqual(baselines.fastvar_layer_range(40), (4, 35))
    cfg = config_lib.get_variant("infinity_8b")
    plan = validation.validate_plan(baselines.fastvar_plan(cfg), cfg)
    self.assertEqual(plan.scales[9].layers, "F" * 4 + "S" * 31 + "F" * 5)

  def test_fastvar_roles_on_other_schedules(self):
    sq = config_lib.square_schedule
    self.assertEqual(baselines.fastvar_scales(sq(config_lib.INFINITY_1M_SIDES)),
                     (8, 11, {9: 0.4, 10: 0.5}))
    # Emoji v2 (final 32): cache 12x12 (3/8), prune 16x16 (1/2: 0.4), exit
    # at 24x24 (3/4).
    self.assertEqual(baselines.fastvar_scales(sq(config_lib.EMOJI_SIDES)),
                     (9, 11, {10: 0.4}))
    # VAR (final 16): cache 6 (3/8), prune 8 (0.4) and 10 (5/8: 0.5), exit
    # at 13 (>= 3/4).
    var = config_lib.get_variant("var_d16")
    self.assertEqual(baselines.fastvar_scales(var.schedule),
                     (5, 8, {6: 0.4, 7: 0.5}))
    # Between the reference sides the fraction is interpolated.
    _, _, pruned = baselines.fastvar_scales(sq((1, 2, 3, 6, 9, 10, 16)))
    self.assertEqual(pruned, {4: 0.4 + 0.1 * (9 / 16 - 0.5) / 0.125,
                              5: 0.5})
    for name in ("var_d16", "emoji"):
      cfg = config_lib.get_variant(name)
      plan = validation.validate_plan(baselines.fastvar_plan(cfg), cfg)
      cache, exit_scale, pruned = baselines.fastvar_scales(cfg.schedule)
      self.assertEqual(plan.exit_scale, exit_scale)
      for s, sp in enumerate(plan.scales):
        n = cfg.tokens_per_scale[s]
        self.assertEqual(sp.keep, n - int(n * pruned.get(s, 0.0)))
        self.assertEqual(sp.cache_from, cache if sp.keep < n else None)

  def test_fastvar_rejects_too_short_schedules(self):
    with self.assertRaisesRegex(
        plan_lib.PlanError,
        r"^plan 'fastvar', field 'schedule': schedule \[\[1, 1\], \[4, 4\]\] "
        r"has no scale before FastVAR's exit"):
      baselines.fastvar_scales(config_lib.square_schedule((1, 4)))

  def test_fastvar_is_remade_for_other_templates(self):
    # 1.5 at 1M: the same scale positions as 1:1 (prune 9, 10; cache 8).
    cfg = config_lib.at_resolution(_2B, 1.5, "1M")
    plan = validation.validate_plan(baselines.fastvar_plan(cfg), cfg)
    self.assertEqual((plan.exit_scale, plan.scales[9].cache_from), (11, 8))
    self.assertEqual(plan.scales[9].keep, 39 * 26 - int(39 * 26 * 0.4))
    self.assertEqual(plan.scales[10].keep, 48 * 32 - int(48 * 32 * 0.5))
    # 0.25M (10 scales): by position from the end.
    cfg = config_lib.at_resolution(_2B, 0.5, "0.25M")
    plan = validation.validate_plan(baselines.fastvar_plan(cfg), cfg)
    self.assertEqual(plan.exit_scale, 8)
    self.assertEqual([sp.scorer for sp in plan.scales],
                     ["none"] * 6 + ["frequency"] * 2)
    self.assertEqual(plan.scales[6].cache_from, 5)
    self.assertEqual(cfg.schedule[6], (11, 22))
    self.assertEqual(plan.scales[6].keep, 242 - int(242 * 0.4))

  def test_skipvar(self):
    plan = baselines.skipvar_plan(_2B, skip_scales=2, drop_uncond_from=10)
    validation.validate_plan(plan, _2B)
    self.assertEqual(plan.exit_scale, 11)
    self.assertEqual([sp.guidance for sp in plan.scales],
                     [True] * 10 + [False])

  def test_skipvar_action_names(self):
    plan = baselines.skipvar_action_plan("skipvar_skip2_uncond10", _2B)
    self.assertEqual(plan, validation.validate_plan(baselines.skipvar_plan(
        _2B, skip_scales=2, drop_uncond_from=10), _2B))
    self.assertEqual(plan.name, "skipvar_skip2_uncond10")
    self.assertEqual(baselines.skipvar_action_plan("skipvar_skip1", _2B).name,
                     "skipvar_skip1")
    self.assertIsNone(baselines.skipvar_action_plan("dense", _2B))
    with self.assertRaisesRegex(plan_lib.PlanError, "skip_scales=13"):
      baselines.skipvar_action_plan("skipvar_skip13", _2B)


if __name__ == "__main__":
  absltest.main()
