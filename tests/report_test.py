"""The report of a generate run: results.json and the comparison grid, from
hand-made runs (no model runs)."""

import json

from absl.testing import absltest
import numpy as np

from configs import tiny
from toprovar_jax import report
from toprovar_jax.models import config as config_lib
from toprovar_jax.sampling import conditions as conditions_lib
from toprovar_jax.sampling import runner
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.sparsity import baselines
from toprovar_jax.weights import loading

_CFG = config_lib.get_variant("var_tiny")


def _run(plan, images, flops):
  smp = sampler_lib.Sampler(model=_CFG, tokenizer=None, plan=plan)
  output = runner.Output(
      images=images, seed=3, batches=(0, 0, 1), rows=(0, 1, 0),
      timings=dict(compile_generate_s=2.0, compile_decode_s=1.0,
                   generate_s=0.5, decode_s=0.25))
  return runner.PlanRun(spec=plan.name if plan else "dense", sampler=smp,
                        output=output, flops=flops, dense_flops=4e9)


class ReportTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    images = np.zeros((3, 8, 8, 3), np.uint8)
    other = images.copy()
    other[1] = 255
    self.runs = (_run(None, images, 4e9),
                 _run(baselines.skipvar_plan(_CFG, skip_scales=1), other, 2e9))
    self.cond = conditions_lib.Conditions(
        labels=np.array([1, 2, 3], np.int32))

  def _record(self, arg=None):
    return report.results_record(
        config=tiny.get_config(arg), runs=self.runs, conditions=self.cond,
        source=loading.ParamsSource(loading.RANDOM_INIT, loading.RANDOM_INIT),
        init_s=0.1, files=[["a0", "a1", "a2"], ["b0", "b1", "b2"]],
        grids=["ga", "gb"], grid="grid.png",
        outputs=["grid.png", "b0", "a0", "config.json"])

  def test_results_record(self):
    r = self._record()
    json.dumps(r, allow_nan=False)
    # Sorted: the list io.publish checks against the files it writes.
    self.assertEqual(r["outputs"], ["a0", "b0", "config.json", "grid.png"])
    # The batch size used: configs/tiny.py's 2; 0 = all 3 in one batch.
    self.assertEqual(r["batch_size"], 2)
    self.assertEqual(self._record("batch_size=0")["batch_size"], 3)
    self.assertEqual((r["model"], r["plan"], r["seeds"]), ("var_tiny",
                                                          "dense", [3]))
    self.assertEqual(r["samples"][2], dict(file="a2", seed=3, index=2,
                                           batch=1, row=0, label=3))
    dense, skip = r["plans"]
    self.assertIsNone(dense["similarity_to_reference"])
    self.assertEqual(skip["flop_speedup_vs_dense"], 2.0)
    self.assertEqual(skip["similarity_to_reference"]["identical_samples"], 2)
    self.assertEqual(skip["generate_speedup_vs_reference"], 1.0)

  def test_comparison_grid(self):
    grid = report.comparison_grid(self.runs, ["x", "y", "z"])
    body = (2 * (8 + 2) + 2, 200 + 3 * (8 + 2) + 2)
    self.assertEqual(grid.shape[1:], (body[1], 3))
    self.assertGreater(grid.shape[0], body[0])  # plus the header strip
    self.assertEqual(report.comparison_grid(self.runs).shape[:2], body)


if __name__ == "__main__":
  absltest.main()
