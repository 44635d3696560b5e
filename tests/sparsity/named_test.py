"""Plan lookup: built-in names, the plans shipped as package data, paths."""

import os
import pathlib
import tempfile

from absl.testing import absltest

from tests.sparsity import small_plans
import toprovar_jax
from toprovar_jax.models import config as config_lib
from toprovar_jax.sparsity import baselines
from toprovar_jax.sparsity import codec
from toprovar_jax.sparsity import named
from toprovar_jax.sparsity import plan as plan_lib


_2B = small_plans.INFINITY_2B


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
    # A shipped plan is named by its name, a user's file by its path (the
    # wrapped error keeps where the problem is).
    with self.assertRaisesWithLiteralMatch(
        plan_lib.PlanError,
        "plan 'infinity_2b_paper', field 'num_layers': plan has 32 layers, "
        "model 'infinity_8b' has depth 40"):
      named.load_plan("infinity_2b_paper",
                      config_lib.get_variant("infinity_8b"))
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, "mine.json")
      with open(path, "w", encoding="utf-8") as f:
        f.write((named.plans_dir() / "infinity_2b_paper.json").read_text(
            encoding="utf-8"))
      with self.assertRaisesWithLiteralMatch(
          plan_lib.PlanError,
          f"plan file {path!r}: plan 'infinity_2b_paper', field "
          "'num_layers': plan has 32 layers, model 'infinity_8b' has depth "
          "40") as cm:
        named.load_plan(path, config_lib.get_variant("infinity_8b"))
    self.assertEqual((cm.exception.plan, cm.exception.field),
                     ("infinity_2b_paper", "num_layers"))

  def test_unknown_name(self):
    with self.assertRaisesRegex(
        plan_lib.PlanError,
        r"^field 'plan': no named plan 'nope' under .*; known: \['dense', "
        r"'fastvar', .*'infinity_2b_paper'"):
      named.load_plan("nope", _2B)

  def test_named_plans_are_package_data(self):
    # Resolved inside the installed package, not beside a source checkout.
    package = pathlib.Path(toprovar_jax.__file__).resolve().parent
    self.assertEqual(named.plans_dir().resolve(),
                     package / "sparsity" / "plans")
    self.assertEqual(set(named.named_plans()),
                     {"emoji_default", "emoji_paper", "infinity_2b_paper"})
    for name in named.named_plans():
      text = (named.plans_dir() / f"{name}.json").read_text(encoding="utf-8")
      self.assertEqual(codec.plan_from_json(text).name, name)

  def test_skipvar_is_not_one_static_plan(self):
    with self.assertRaisesRegex(plan_lib.PlanError,
                                r"^field 'plan': 'skipvar' chooses its "
                                r"suffix plan per image"):
      named.load_plan("skipvar", _2B)

  def test_a_name_cannot_climb_out(self):
    with self.assertRaisesRegex(plan_lib.PlanError,
                                r"plan file '\.\./plans/infinity_2b_paper': "
                                "cannot read"):
      named.load_plan("../plans/infinity_2b_paper", _2B)

  def test_missing_file(self):
    with self.assertRaisesRegex(plan_lib.PlanError,
                                r"^field 'plan': plan file "
                                r"'/nonexistent/plan.json': cannot read: "):
      named.load_plan("/nonexistent/plan.json", _2B)

  def test_bad_files_are_named(self):
    plan_json = codec.plan_to_json(baselines.fastvar_plan(_2B)).encode()
    cases = {
        # Latin-1 bytes in a name: not UTF-8.
        "latin1.json": (plan_json.replace(b"fastvar", b"fastv\xe4r", 1),
                        r"not UTF-8 text \(byte \d+: invalid"),
        "truncated.json": (plan_json[:40], r"not JSON: .* \(line \d+\)"),
        "nan.json": (plan_json.replace(b'"keep": ', b'"keep": NaN, "x": ', 1),
                     "NaN"),
        "dup.json": (b'{"name": "a", "name": "b"}', "duplicate"),
        "array.json": (b"[1, 2]", "must be a JSON object"),
    }
    with tempfile.TemporaryDirectory() as d:
      for name, (data, pattern) in cases.items():
        path = os.path.join(d, name)
        with open(path, "wb") as f:
          f.write(data)
        with self.subTest(name):
          with self.assertRaisesRegex(
              plan_lib.PlanError,
              rf"^(field 'plan': )?plan file {path!r}: .*{pattern}"):
            named.load_plan(path, _2B)
      with self.assertRaisesRegex(plan_lib.PlanError,
                                  rf"plan file {d!r}: cannot read"):
        named.load_plan(d + os.sep, _2B)


if __name__ == "__main__":
  absltest.main()
