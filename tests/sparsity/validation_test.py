"""Validation: one case per SPEC §3 rule; every message names the plan,
the scale and the field, and is pinned exactly."""

import dataclasses

from absl.testing import absltest
from absl.testing import parameterized

from tests.sparsity import small_plans
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import validation


_CFG = small_plans.CFG
_ENTROPY_2 = small_plans.ENTROPY_2
_scale = small_plans.scale
_plan = small_plans.plan


class ValidationTest(parameterized.TestCase):
  """One case per SPEC §3 validation rule; messages are pinned exactly."""

  def assertPlanError(self, plan, message, cfg=_CFG):
    with self.assertRaisesWithLiteralMatch(plan_lib.PlanError, message):
      validation.validate_plan(plan, cfg)

  def test_valid_small_plans(self):
    validation.validate_plan(_plan(), _CFG)
    validation.validate_plan(_plan(_scale(1), _scale(4), _scale(**_ENTROPY_2)),
                           _CFG)

  def test_error_attributes(self):
    with self.assertRaises(plan_lib.PlanError) as ctx:
      validation.validate_plan(_plan(_scale(1), _scale(0)), _CFG)
    self.assertIsInstance(ctx.exception, ValueError)
    self.assertEqual((ctx.exception.plan, ctx.exception.scale,
                      ctx.exception.field), ("p", 1, "keep"))

  def test_depth(self):
    self.assertPlanError(
        _plan(num_layers=3),
        "plan 'p', field 'num_layers': plan has 3 layers, model 'plan_test' "
        "has depth 4")

  def test_schedule_entry(self):
    self.assertPlanError(
        _plan(schedule=((1, 1), (3, 3), (4, 4))),
        "plan 'p', scale 1, field 'schedule': plan has [3, 3], model "
        "'plan_test' has [2, 2] (the plan was made for a custom schedule (3 "
        "scales, last 4x4), the model runs a custom schedule (3 scales, last "
        "4x4))")

  def test_schedule_length(self):
    self.assertPlanError(
        _plan(schedule=((1, 1), (2, 2))),
        "plan 'p', field 'schedule': plan has 2 scales, model 'plan_test' "
        "has 3 (the plan was made for a custom schedule (2 scales, last 2x2), "
        "the model runs a custom schedule (3 scales, last 4x4))")

  def test_schedule_must_be_tuples(self):
    self.assertPlanError(
        _plan(schedule=[(1, 1), (2, 2), (4, 4)]),
        "plan 'p', field 'schedule': must be a tuple of (h, w) tuples")

  @parameterized.parameters(0, 3, -1)
  def test_exit_scale_range(self, exit_scale):
    plan = dataclasses.replace(_plan(), exit_scale=exit_scale)
    self.assertPlanError(
        plan,
        f"plan 'p', field 'exit_scale': exit_scale={exit_scale} is outside "
        "[1, 2] (null generates all 3 scales)")

  def test_number_of_scales(self):
    plan = dataclasses.replace(_plan(), exit_scale=2)
    self.assertPlanError(
        plan,
        "plan 'p', field 'scales': has 3 ScalePlans, expected 2 (one per "
        "generated scale; exit_scale=2, S=3)")
    plan = dataclasses.replace(_plan(), scales=_plan().scales[:2])
    self.assertPlanError(
        plan,
        "plan 'p', field 'scales': has 2 ScalePlans, expected 3 (one per "
        "generated scale; exit_scale=None, S=3)")

  @parameterized.parameters(0, 5)
  def test_keep_range(self, keep):
    self.assertPlanError(
        _plan(_scale(1), _scale(keep, "FSSF", scorer="frequency")),
        f"plan 'p', scale 1, field 'keep': K_s={keep} is outside "
        "[1, N_s=4]")

  def test_layers_length(self):
    self.assertPlanError(
        _plan(_scale(1, "FFF")),
        "plan 'p', scale 0, field 'layers': has 3 letters, expected one per "
        "layer (4)")

  def test_layers_letter(self):
    self.assertPlanError(
        _plan(_scale(1), _scale(4, "FFsF")),
        "plan 'p', scale 1, field 'layers': letter 's' at layer 2; allowed: "
        "F, S, X")

  def test_probe_out_of_range(self):
    self.assertPlanError(
        _plan(_scale(1, probe_layer=4)),
        "plan 'p', scale 0, field 'probe_layer': layer 4 is outside [0, 4)")

  @parameterized.parameters("S", "X")
  def test_probe_not_full(self, letter):
    self.assertPlanError(
        _plan(_scale(1), _scale(4, "F" + letter + "FF", probe_layer=1)),
        f"plan 'p', scale 1, field 'probe_layer': layer 1 is '{letter}'; a "
        "probe must be an F layer (entropy over all N_s tokens)")

  def test_probe_missing(self):
    self.assertPlanError(
        _plan(_scale(1), _scale(4), _scale(8, "FFSS", scorer="entropy")),
        "plan 'p', scale 2, field 'probe_layer': missing: scorer 'entropy' "
        "with entropy_from 'probe' needs an F probe layer at this scale")

  def test_probe_after_first_sparse(self):
    self.assertPlanError(
        _plan(_scale(1), _scale(4),
              _scale(8, "FSFS", probe_layer=2, scorer="entropy")),
        "plan 'p', scale 2, field 'probe_layer': layer 2 comes after the "
        "first S layer (1); entropy_from 'probe' needs the probe before it")

  def test_previous_at_first_scale(self):
    self.assertPlanError(
        _plan(_scale(1, scorer="entropy", entropy_from="previous")),
        "plan 'p', scale 0, field 'entropy_from': 'previous' at the first "
        "scale: there is no previous probe")

  def test_previous_without_probe(self):
    self.assertPlanError(
        _plan(_scale(1), _scale(4),
              _scale(8, "SSSS", scorer="entropy", entropy_from="previous")),
        "plan 'p', scale 2, field 'entropy_from': 'previous' needs a "
        "probe_layer at scale 1")

  def test_previous_with_probe_is_valid(self):
    validation.validate_plan(
        _plan(_scale(1), _scale(4, probe_layer=3),
              _scale(8, "SSSS", scorer="entropy", entropy_from="previous")),
        _CFG)

  @parameterized.named_parameters(
      ("scorer", "scorer", "random", "['entropy', 'frequency', 'none']"),
      ("entropy_from", "entropy_from", "next", "['probe', 'previous']"),
      ("select", "select", "token", "['scale', 'sublayer']"),
      ("restore", "restore", "zero", "['passthrough', 'cached']"),
  )
  def test_enum_values(self, field, value, allowed):
    sp = dataclasses.replace(_scale(4), **{field: value})
    self.assertPlanError(
        _plan(_scale(1), sp),
        f"plan 'p', scale 1, field '{field}': must be one of {allowed}, got "
        f"'{value}'")

  def test_sublayer_with_entropy(self):
    self.assertPlanError(
        _plan(_scale(1), _scale(4), _scale(select="sublayer", **_ENTROPY_2)),
        "plan 'p', scale 2, field 'select': 'sublayer' re-scores every "
        "sub-layer, which only the 'frequency' scorer does; use 'scale' with "
        "'entropy'")

  def test_cached_without_cache_from(self):
    self.assertPlanError(
        _plan(_scale(1), _scale(4),
              _scale(8, "FSSF", scorer="frequency", restore="cached")),
        "plan 'p', scale 2, field 'cache_from': missing: restore 'cached' "
        "needs the scale whose branch outputs are reused")

  @parameterized.parameters(2, 3, -1)
  def test_cache_from_not_earlier(self, cache_from):
    self.assertPlanError(
        _plan(_scale(1), _scale(4),
              _scale(8, "FSSF", scorer="frequency", restore="cached",
                     cache_from=cache_from)),
        f"plan 'p', scale 2, field 'cache_from': cache_from={cache_from} is "
        "not an earlier scale (< 2)")

  def test_cache_scale_not_full(self):
    self.assertPlanError(
        _plan(_scale(1), _scale(2, "FFSX", scorer="frequency"),
              _scale(8, "FSSF", scorer="frequency", restore="cached",
                     cache_from=1)),
        "plan 'p', scale 2, field 'cache_from': layer 2 is S here but 'S' at "
        "scale 1; cached restore needs full-map branch outputs there (F)")

  def test_cache_scale_full_is_valid(self):
    validation.validate_plan(
        _plan(_scale(1), _scale(2, "FFFS", scorer="frequency"),
              _scale(8, "FSSF", scorer="frequency", restore="cached",
                     cache_from=1)), _CFG)

  def test_cache_from_with_passthrough(self):
    self.assertPlanError(
        _plan(_scale(1), _scale(4, cache_from=0)),
        "plan 'p', scale 1, field 'cache_from': cache_from=0 is set but "
        "restore is 'passthrough'; use null")

  def test_none_scorer_with_pruning(self):
    self.assertPlanError(
        _plan(_scale(1), _scale(2, "FXSF")),
        "plan 'p', scale 1, field 'scorer': scorer 'none' but K_s=2 < N_s=4 "
        "in S layers (first: layer 2); choose 'entropy' or 'frequency'")

  def test_none_scorer_without_pruning_is_valid(self):
    # K_s = N_s in S layers, or K_s < N_s with no S layer: nothing to score.
    validation.validate_plan(_plan(_scale(1), _scale(4, "SSSS")), _CFG)
    validation.validate_plan(_plan(_scale(1), _scale(2, "FXXF")), _CFG)

  def test_guidance_back_on(self):
    self.assertPlanError(
        _plan(_scale(1), _scale(4, guidance=False), _scale(16)),
        "plan 'p', scale 2, field 'guidance': guidance turns back on after "
        "scale 1 dropped the uncond branch (its K/V were never computed)")

  def test_types_in_dataclass(self):
    self.assertPlanError(
        _plan(_scale(1), _scale(4, share_cfg=0)),
        "plan 'p', scale 1, field 'share_cfg': must be true or false, got 0")
    self.assertPlanError(
        _plan(name=3), "field 'name': must be a string, got 3")


if __name__ == "__main__":
  absltest.main()
