"""Adaptive ToProVAR as data (`sparsity.adaptive`): the spec, the family,
the threshold calibration."""

import json
import pathlib
import tempfile

from absl.testing import absltest
import numpy as np

from toprovar_jax.models import config as config_lib
from toprovar_jax.sparsity import adaptive
from toprovar_jax.sparsity import codec
from toprovar_jax.sparsity import named
from toprovar_jax.sparsity import plan as plan_lib

_CFG = config_lib.get_variant("emoji")


def _spec(**over):
  d = dict(kind="adaptive", name="emoji_adaptive", decision_scale=10,
           statistic_scales=[7, 8, 9], plans=["emoji_default", "dense"],
           thresholds=[0.45])
  d.update(over)
  return d


class SpecTest(absltest.TestCase):

  def test_plans_by_name_inline_and_relative_path(self):
    base = named.load_plan("emoji_default", _CFG)
    fam = adaptive.family(base, (11,), _CFG)[0]
    with tempfile.TemporaryDirectory() as d:
      (pathlib.Path(d) / "d11.json").write_text(codec.plan_to_json(fam))
      path = pathlib.Path(d) / "spec.json"
      path.write_text(json.dumps(_spec(
          plans=["emoji_default", "d11.json", codec.plan_to_dict(
              plan_lib.dense_plan(_CFG))], thresholds=[0.4, 0.5],
          record={"anything": 1})))
      spec = adaptive.load_spec(path, _CFG)
    self.assertEqual([p.name for p in spec.plans],
                     ["emoji_default", "emoji_default_D11", "dense"])
    np.testing.assert_array_equal(spec.choose([0.3, 0.4, 0.45, 0.5, 0.9]),
                                  [0, 1, 1, 2, 2])
    hash(spec)
    back = adaptive.spec_from_dict(adaptive.spec_to_dict(spec), _CFG)
    self.assertEqual(back, spec)

  def test_bad_json_is_one_line_naming_the_field(self):
    cases = (
        (dict(thresholds=[0.5, 0.4]), "thresholds", ""),
        (dict(thresholds=[0.4, 0.5]), "thresholds", "one fewer than plans"),
        (dict(thresholds=["x"]), "thresholds", ""),
        (dict(decision_scale=14), "decision_scale", "in \\[1, 13\\]"),
        (dict(statistic_scales=[10]), "statistic_scales", "\\[0, 10\\)"),
        (dict(plans=["emoji_default"]), "plans", "2..4"),
        (dict(plans=["emoji_default", "nope"]), "plans\\[1\\]",
         "no named plan 'nope'"),
        (dict(plans=["dense", {"name": "x"}]), "plans\\[1\\]", ""),
        (dict(plans=["dense", "dense"]), "plans", "must differ"),
        (dict(kind="static"), "kind", ""),
        (dict(extra=1), "extra", "unknown field"),
    )
    for over, field, msg in cases:
      with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / "a.json"
        path.write_text(json.dumps(_spec(**over)))
        with self.assertRaisesRegex(
            plan_lib.PlanError,
            f"^adaptive spec '{path}': field '{field}': .*{msg}") as cm:
          adaptive.load_spec(path, _CFG)
        self.assertNotIn("\n", str(cm.exception))
    d = _spec()
    del d["thresholds"]
    with self.assertRaisesRegex(plan_lib.PlanError,
                                "field 'thresholds': missing"):
      adaptive.spec_from_dict(d, _CFG)
    with self.assertRaisesRegex(plan_lib.PlanError, "cannot read"):
      adaptive.load_spec("/nonexistent/a.json", _CFG)


class FamilyTest(absltest.TestCase):

  def test_pruning_from_later_scales(self):
    base = named.load_plan("emoji_default", _CFG)
    self.assertEqual(adaptive.first_pruned(base), 10)
    fam = adaptive.family(base, (10, 12, 13), _CFG)
    self.assertEqual([adaptive.first_pruned(p) for p in fam], [10, 12, 13])
    self.assertEqual(fam[0].scales, base.scales)
    self.assertEqual(fam[1].scales[12], base.scales[12])
    self.assertEqual(set(fam[1].scales[11].layers), {"F"})
    self.assertEqual(fam[2].scales, plan_lib.dense_plan(_CFG).scales)
    self.assertEqual(adaptive.first_difference(fam), 10)


class CalibrateTest(absltest.TestCase):

  def test_thresholds_send_hard_images_to_the_deep_plan(self):
    rng = np.random.default_rng(0)
    stat = rng.uniform(0, 1, 200)
    # Cheap plan (flops 1) is fine for low-r images, bad for high-r ones;
    # the expensive plan (flops 3) is fine for all.
    ssim = np.stack([np.where(stat < 0.6, 0.95, 0.5), np.full(200, 0.97)])
    flops = np.array([1.0, 3.0])
    cal = adaptive.calibrate(stat, ssim, flops, budget=2.0)
    self.assertEqual(cal["direction"], "low_cheap")
    self.assertEqual(cal["order"], [0, 1])
    # Every image with r >= 0.6 goes deep; the budget (half the images at
    # most) bounds it from below.
    self.assertBetween(cal["thresholds"][0], 0.48, 0.6)
    self.assertLessEqual(cal["mean_flops"], 2.0)
    # Within the budget only the cheap plan fits as a single plan.
    self.assertEqual(cal["best_static"]["index"], 0)
    self.assertGreater(cal["mean_ssim"], cal["best_static"]["ssim"] + 0.15)
    # The opposite correlation flips the order.
    cal2 = adaptive.calibrate(1 - stat, ssim, flops, budget=2.0)
    self.assertEqual(cal2["direction"], "high_cheap")
    self.assertEqual(cal2["order"], [1, 0])
    with self.assertRaisesRegex(ValueError, "budget"):
      adaptive.calibrate(stat, ssim, flops, budget=0.5)


if __name__ == "__main__":
  absltest.main()
