"""Test helpers: the micro configs build, the plan helpers validate, the
reference folder can be moved."""

import os
import pathlib
import re
from unittest import mock

from absl.testing import absltest

from toprovar_jax import testing
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import validation


class TestingTest(absltest.TestCase):

  def test_micro_configs(self):
    inf, var = testing.micro_infinity(), testing.micro_var()
    self.assertEqual((inf.style, inf.depth, inf.num_scales), ("infinity", 3, 4))
    self.assertEqual((var.style, var.depth, var.num_scales), ("var", 3, 4))

  def test_probe_sx_plan_is_valid_and_as_documented(self):
    for cfg in (testing.micro_infinity(), testing.micro_var()):
      plan = validation.validate_plan(testing.probe_sx_plan(cfg), cfg)
      self.assertEqual([sp.layers for sp in plan.scales],
                       ["FFF", "FFF", "FSS", "FSX"])
      self.assertEqual([sp.keep for sp in plan.scales[2:]], [8, 16])
      self.assertEqual([sp.guidance for sp in plan.scales],
                       [True, True, True, False])

  def test_with_scales(self):
    cfg = testing.micro_var()
    plan = testing.with_scales(plan_lib.dense_plan(cfg), "x",
                               lambda s, sp: sp if s else
                               plan_lib.ScalePlan(keep=1, layers="FXF"))
    self.assertEqual(plan.name, "x")
    self.assertEqual(plan.scales[0].layers, "FXF")
    self.assertEqual(plan.scales[1:], plan_lib.dense_plan(cfg).scales[1:])

  def test_reference_dir_override(self):
    with mock.patch.dict(os.environ, {"TOPROVAR_REFERENCE_DIR": "/elsewhere"}):
      self.assertEqual(str(testing.reference_dir()), "/elsewhere")
      with self.assertRaisesRegex(FileNotFoundError,
                                  "no reference files for 'var_tiny' under "
                                  "/elsewhere"):
        testing.load_reference("var_tiny")

  def test_tests_that_read_the_golden_files_never_skip(self):
    # Missing golden files must fail (load_reference raises), not skip:
    # a skipped parity test looks like a passing suite.
    readers = []
    skip = re.compile("|".join(["skip" + "Test\\(", "pytest\\.skip",
                                "skip" + "If", "skip" + "Unless"]))
    for path in sorted(pathlib.Path(__file__).parent.rglob("*_test.py")):
      text = path.read_text()
      if re.search(r"load_reference\(|reference_dir\(", text):
        readers.append(path.name)
        found = skip.search(text)
        self.assertIsNone(found, f"{path} skips: {found}")
    self.assertContainsSubset(["bsq_vae_test.py", "vqvae_test.py",
                               "parity_test.py"], readers)


if __name__ == "__main__":
  absltest.main()
