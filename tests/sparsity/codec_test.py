"""The SPEC §3 JSON form: round trips, the documented form, strict parsing."""

import json
import os

from absl.testing import absltest
from absl.testing import parameterized

from tests.sparsity import small_plans
from toprovar_jax.sparsity import baselines
from toprovar_jax.sparsity import codec
from toprovar_jax.sparsity import named
from toprovar_jax.sparsity import plan as plan_lib


_CFG = small_plans.CFG
_2B = small_plans.INFINITY_2B
_plan = small_plans.plan
_paper_plan = small_plans.paper_plan


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


if __name__ == "__main__":
  absltest.main()
