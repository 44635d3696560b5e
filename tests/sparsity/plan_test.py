"""Tests for toprovar_jax.sparsity (plan, codec, validation, baselines, named): JSON form, validation, static helpers.

Validation messages are pinned exactly: SPEC §3 requires every failure to
name the scale and the field.
"""

import dataclasses
import json
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp

from toprovar_jax.models import config as config_lib
from toprovar_jax.sparsity import baselines
from toprovar_jax.sparsity import codec
from toprovar_jax.sparsity import layout
from toprovar_jax.sparsity import named
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import validation

# A 4-layer model with 3 scales (N_s = 1, 4, 16) keeps hand computations short.
_CFG = config_lib.replace(
    config_lib.get_variant("infinity_tiny"), name="plan_test", depth=4,
    schedule=config_lib.square_schedule((1, 2, 4)))
_2B = config_lib.get_variant("infinity_2b")

_F4 = "FFFF"


def _scale(keep, layers=_F4, **kw) -> plan_lib.ScalePlan:
  return plan_lib.ScalePlan(keep=keep, layers=layers, **kw)


def _plan(*scales, exit_scale=None, **kw) -> plan_lib.SparsityPlan:
  """A plan for _CFG; missing scales are dense."""
  n = (1, 4, 16)
  num = 3 if exit_scale is None else exit_scale
  full = list(scales) + [_scale(n[s]) for s in range(len(scales), num)]
  args = dict(name="p", schedule=((1, 1), (2, 2), (4, 4)), num_layers=4,
              exit_scale=exit_scale, scales=tuple(full))
  args.update(kw)
  return plan_lib.SparsityPlan(**args)


# An entropy-pruned scale 2 (N_2 = 16), valid on its own.
_ENTROPY_2 = dict(keep=8, layers="FFSS", probe_layer=1, scorer="entropy")


def _paper_plan() -> plan_lib.SparsityPlan:
  return named.load_plan("infinity_2b_paper", _2B)


class ConstructorTest(absltest.TestCase):

  def test_dense(self):
    plan = plan_lib.dense_plan(_2B)
    validation.validate_plan(plan, _2B)
    self.assertIsNone(plan.exit_scale)
    self.assertEqual([sp.keep for sp in plan.scales],
                     list(_2B.tokens_per_scale))
    for sp in plan.scales:
      self.assertEqual(sp.layers, "F" * 32)
      self.assertEqual(sp.scorer, "none")
      self.assertTrue(sp.guidance)

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

  def test_fastvar_rejects_other_schedules(self):
    with self.assertRaisesRegex(
        plan_lib.PlanError,
        r"^plan 'fastvar', field 'schedule': FastVAR is defined only for "
        r"the 13-scale 1:1 1M Infinity schedule"):
      baselines.fastvar_plan(config_lib.get_variant("var_d16"))

  def test_skipvar(self):
    plan = baselines.skipvar_plan(_2B, skip_scales=2, drop_uncond_from=10)
    validation.validate_plan(plan, _2B)
    self.assertEqual(plan.exit_scale, 11)
    self.assertEqual([sp.guidance for sp in plan.scales],
                     [True] * 10 + [False])

  def test_paper_plan(self):
    plan = _paper_plan()
    self.assertEqual(plan.name, "infinity_2b_paper")
    self.assertEqual(plan.scales[:10], plan_lib.dense_plan(_2B).scales[:10])
    for s, keep in ((10, 160), (11, 232), (12, 408)):
      sp = plan.scales[s]
      self.assertEqual(sp.keep, keep)
      self.assertEqual(sp.keep % 8, 0)
      self.assertEqual(sp.layers, "FFF" + "S" * 28 + "F")
      self.assertEqual(
          (sp.probe_layer, sp.scorer, sp.entropy_from, sp.select,
           sp.share_cfg, sp.restore, sp.cache_from, sp.guidance),
          (2, "entropy", "probe", "scale", True, "passthrough", None, True))


class JsonTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("dense", lambda: plan_lib.dense_plan(_2B)),
      ("paper", _paper_plan),
      ("fastvar", lambda: baselines.fastvar_plan(_2B)),
      ("skipvar", lambda: baselines.skipvar_plan(_2B, skip_scales=1,
                                                drop_uncond_from=11)),
  )
  def test_round_trip(self, make):
    plan = make()
    text = codec.plan_to_json(plan)
    back = codec.plan_from_json(text)
    self.assertEqual(back, plan)
    self.assertEqual(hash(back), hash(plan))
    self.assertEqual(codec.plan_from_json(json.loads(text)), plan)
    self.assertEqual(codec.plan_to_json(back), text)

  def test_documented_form(self):
    d = json.loads(codec.plan_to_json(plan_lib.dense_plan(_CFG)))
    self.assertEqual(list(d), ["name", "schedule", "num_layers", "exit_scale",
                               "scales"])
    self.assertEqual(d["schedule"], [[1, 1], [2, 2], [4, 4]])
    self.assertEqual(d["scales"][0], {
        "keep": 1, "layers": "FFFF", "probe_layer": None, "scorer": "none",
        "entropy_from": "probe", "select": "scale", "share_cfg": True,
        "restore": "passthrough", "cache_from": None, "guidance": True})

  def test_paper_file_is_canonical(self):
    # The checked-in file is exactly what plan_to_json writes.
    with open(os.path.join(named.plans_dir(), "infinity_2b_paper.json"),
              encoding="utf-8") as f:
      text = f.read()
    self.assertEqual(codec.plan_to_json(codec.plan_from_json(text)),
                     text)

  def _dense_dict(self):
    return json.loads(codec.plan_to_json(_plan()))

  def test_unknown_top_level_field(self):
    d = self._dense_dict()
    d["exit"] = 2
    with self.assertRaisesWithLiteralMatch(
        plan_lib.PlanError,
        "plan 'p', field 'exit': unknown field; expected only ['name', "
        "'schedule', 'num_layers', 'exit_scale', 'scales']"):
      codec.plan_from_json(d)

  def test_unknown_scale_field(self):
    d = self._dense_dict()
    d["scales"][1]["kep"] = 3
    with self.assertRaisesRegex(
        plan_lib.PlanError,
        r"^plan 'p', scale 1, field 'kep': unknown field"):
      codec.plan_from_json(d)

  def test_missing_scale_field(self):
    d = self._dense_dict()
    del d["scales"][2]["guidance"]
    with self.assertRaisesWithLiteralMatch(
        plan_lib.PlanError,
        "plan 'p', scale 2, field 'guidance': missing field"):
      codec.plan_from_json(d)

  def test_missing_top_level_field(self):
    d = self._dense_dict()
    del d["exit_scale"]
    with self.assertRaisesWithLiteralMatch(
        plan_lib.PlanError, "plan 'p', field 'exit_scale': missing field"):
      codec.plan_from_json(d)

  def test_bad_schedule_entry(self):
    d = self._dense_dict()
    d["schedule"][1] = [2, 2.0]
    with self.assertRaisesWithLiteralMatch(
        plan_lib.PlanError,
        "plan 'p', scale 1, field 'schedule': must be an [h, w] pair of ints,"
        " got [2, 2.0]"):
      codec.plan_from_json(d)

  @parameterized.named_parameters(
      ("keep_bool", "keep", True, "must be an int, got True"),
      ("keep_float", "keep", 4.0, "must be an int, got 4.0"),
      ("probe_str", "probe_layer", "1", "must be an int or null, got '1'"),
      ("share_int", "share_cfg", 1, "must be true or false, got 1"),
      ("layers_list", "layers", ["F"] * 4,
       "must be a string of F/S/X letters, got ['F', 'F', 'F', 'F']"),
  )
  def test_wrong_type(self, field, value, message):
    d = self._dense_dict()
    d["scales"][1][field] = value
    with self.assertRaisesWithLiteralMatch(
        plan_lib.PlanError, f"plan 'p', scale 1, field '{field}': {message}"):
      codec.plan_from_json(d)

  def test_duplicate_key(self):
    text = codec.plan_to_json(_plan()).replace(
        '"num_layers": 4,', '"num_layers": 4, "num_layers": 5,')
    with self.assertRaisesWithLiteralMatch(
        plan_lib.PlanError,
        "field 'num_layers': duplicate key 'num_layers' in the plan JSON"):
      codec.plan_from_json(text)

  def test_nan_constant(self):
    text = codec.plan_to_json(_plan()).replace('"keep": 4', '"keep": NaN')
    with self.assertRaisesWithLiteralMatch(
        plan_lib.PlanError, "non-standard JSON constant NaN"):
      codec.plan_from_json(text)

  def test_not_json(self):
    with self.assertRaisesRegex(plan_lib.PlanError, "^not valid JSON: "):
      codec.plan_from_json("{'name': 1}")
    with self.assertRaisesWithLiteralMatch(
        plan_lib.PlanError, "the plan must be a JSON object, got list"):
      codec.plan_from_json("[]")


class LoadTest(absltest.TestCase):

  def test_named_and_builtin(self):
    self.assertEqual(named.load_plan("dense", _2B),
                     plan_lib.dense_plan(_2B))
    self.assertEqual(named.load_plan("fastvar", _2B),
                     baselines.fastvar_plan(_2B))
    self.assertIn("infinity_2b_paper", named.named_plans())

  def test_path(self):
    plan = baselines.fastvar_plan(_2B)
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, "mine.json")
      with open(path, "w", encoding="utf-8") as f:
        f.write(codec.plan_to_json(plan))
      self.assertEqual(named.load_plan(path, _2B), plan)

  def test_validates_against_model(self):
    with self.assertRaisesWithLiteralMatch(
        plan_lib.PlanError,
        "plan 'infinity_2b_paper', field 'num_layers': plan has 32 layers, "
        "model 'infinity_8b' has depth 40"):
      named.load_plan("infinity_2b_paper",
                         config_lib.get_variant("infinity_8b"))

  def test_unknown_name(self):
    with self.assertRaisesRegex(
        plan_lib.PlanError,
        r"^field 'plan': no named plan 'nope' under .*; known: \['dense', "
        r"'fastvar', .*'infinity_2b_paper'"):
      named.load_plan("nope", _2B)

  def test_missing_file(self):
    with self.assertRaisesRegex(plan_lib.PlanError,
                                r"^field 'plan': cannot read plan file"):
      named.load_plan("/nonexistent/plan.json", _2B)


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
        "'plan_test' has [2, 2]")

  def test_schedule_length(self):
    self.assertPlanError(
        _plan(schedule=((1, 1), (2, 2))),
        "plan 'p', field 'schedule': plan has 2 scales, model 'plan_test' "
        "has 3")

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


class HelpersTest(absltest.TestCase):
  """Hand-computed cache lengths, offsets, segments and runs.

  Layer columns (scales 0, 1, 2; N_s = 1, 4, 16; K_1 = 2, K_2 = 8):
    l0 F F F  l1 F F F  l2 F S S  l3 F S S  l4 F S X  l5 F F F
  written K/V:  l0 1+4+16 = 21, l2 1+2+8 = 11, l4 1+2+0 = 3.
  """

  def setUp(self):
    super().setUp()
    self.cfg = config_lib.replace(_CFG, depth=6)
    self.plan = plan_lib.SparsityPlan(
        name="h", schedule=((1, 1), (2, 2), (4, 4)), num_layers=6,
        exit_scale=None, scales=(
            _scale(1, "FFFFFF"),
            _scale(2, "FFSSSF", scorer="frequency"),
            _scale(8, "FFSSXF", probe_layer=1, scorer="entropy"),
        ))
    validation.validate_plan(self.plan, self.cfg)

  def test_kv_cache_lengths(self):
    self.assertEqual(layout.kv_cache_lengths(self.plan, self.cfg),
                     (21, 21, 11, 11, 3, 21))
    self.assertEqual(layout.kv_cache_lengths(plan_lib.dense_plan(_2B)),
                     (10521,) * 32)

  def test_kv_cache_lengths_fastvar(self):
    # 2B FastVAR: dense through 24x24 (1497), then 615 + 800 in S layers.
    lengths = layout.kv_cache_lengths(baselines.fastvar_plan(_2B), _2B)
    self.assertEqual(lengths, (4121,) * 3 + (1497 + 615 + 800,) * 25
                     + (4121,) * 4)

  def test_kv_write_offsets(self):
    self.assertEqual(layout.kv_write_offsets(self.plan), (
        (0, 0, 0, 0, 0, 0),
        (1, 1, 1, 1, 1, 1),
        (5, 5, 3, 3, 3, 5),
    ))

  def test_layer_segments(self):
    self.assertEqual(layout.layer_segments(self.plan),
                     ((0, 2), (2, 4), (4, 5), (5, 6)))
    self.assertEqual(layout.layer_segments(plan_lib.dense_plan(_2B)),
                     ((0, 32),))
    self.assertEqual(layout.layer_segments(_paper_plan()),
                     ((0, 3), (3, 31), (31, 32)))

  def test_runs_at_scale(self):
    self.assertEqual(layout.runs_at_scale(self.plan, 0),
                     ((0, 2, "F"), (2, 4, "F"), (4, 5, "F"), (5, 6, "F")))
    # Layers 2..4 are all S at scale 1 but split at the segment boundary 4.
    self.assertEqual(layout.runs_at_scale(self.plan, 1),
                     ((0, 2, "F"), (2, 4, "S"), (4, 5, "S"), (5, 6, "F")))
    self.assertEqual(
        layout.runs_at_scale(self.plan, 2, split_at_probe=True),
        ((0, 1, "F"), (1, 2, "F"), (2, 4, "S"), (4, 5, "X"), (5, 6, "F")))
    with self.assertRaisesWithLiteralMatch(
        plan_lib.PlanError,
        "plan 'h', scale 3, field 'scales': scale 3 is not generated (0..2)"):
      layout.runs_at_scale(self.plan, 3)


class JitStaticTest(absltest.TestCase):

  def test_equal_plans_share_one_trace(self):
    traces = []

    def f(x, plan):
      traces.append(plan.name)
      return x * layout.kv_cache_lengths(plan)[0]

    g = jax.jit(f, static_argnames="plan")
    a = baselines.fastvar_plan(_2B)
    b = codec.plan_from_json(codec.plan_to_json(a))
    self.assertIsNot(a, b)
    self.assertEqual(float(g(jnp.ones(()), plan=a)), 4121.0)
    self.assertEqual(float(g(jnp.ones(()), plan=b)), 4121.0)
    self.assertLen(traces, 1)


if __name__ == "__main__":
  absltest.main()
