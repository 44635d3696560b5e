"""End to end: `experiments/calibrate.py` on configs/tiny.py (infinity_tiny).

Two calibration images (random weights) and the default levels, on the
default mesh (the 4 fake CPU devices of conftest; calibration.json records
it); the plan.json loads as `config.sparsity.plan` and is what
calibration.json describes. (Budget mode's pieces and 1 vs 4 devices:
tests/evaluation/calibration_test.py.)
"""

import json
import os
import pathlib
import sys
import tempfile
from unittest import mock

from absl import flags
from absl.testing import absltest
from absl.testing import flagsaver

from experiments import calibrate
from toprovar_jax.evaluation import calibration as run_lib
from toprovar_jax.models import config as config_lib
from toprovar_jax.sparsity import named

FLAGS = flags.FLAGS
_TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "tiny.py")


class CalibrateMainTest(absltest.TestCase):

  def test_writes_a_plan_that_loads(self):
    with tempfile.TemporaryDirectory() as d:
      prompts = pathlib.Path(d) / "prompts.txt"
      prompts.write_text("a red apple\n\na small blue car\n")
      work = pathlib.Path(d) / "run"
      argv = ["calibrate", f"--config={_TINY}:model=infinity_tiny",
              f"--prompts={prompts}", "--num_images=2", f"--workdir={work}",
              "--rep_side=8", "--tau=0.0", "--min_scale=4"]
      with flagsaver.flagsaver(), mock.patch.object(sys, "argv", argv):
        calibrate.main(FLAGS(argv))
      names = {p.name for p in work.iterdir()}
      self.assertLessEqual({"plan.json", "calibration.json", "rho_s.png",
                            "layer_ratio.png", "entropy_maps.png", "dense",
                            run_lib.STATE}, names)
      self.assertLen(list((work / "dense").iterdir()), 2)
      rec = json.loads((work / "calibration.json").read_text())
      self.assertEqual(rec["num_images"], 2)
      self.assertEqual((rec["mesh"], rec["device_count"],
                        rec["process_count"]), ({"data": 4}, 4, 1))
      self.assertEqual(rec["depth"], 4)
      self.assertEqual(rec["config"]["min_scale"], 4)
      model = config_lib.get_variant("infinity_tiny")
      plan = named.load_plan(str(work / "plan.json"), model)
      self.assertEqual([sp.layers for sp in plan.scales], rec["layers"])
      self.assertEqual([sp.keep for sp in plan.scales], rec["keep"])
      self.assertAlmostEqual(rec["flop_speedup"], rec["dense_flops"] /
                             rec["flops"])
      self.assertEqual(plan.name, "calibrated")
      # A second run finds every image saved: nothing is generated again.
      with flagsaver.flagsaver(), mock.patch.object(sys, "argv", argv):
        calibrate.main(FLAGS(argv))
      self.assertEqual(json.loads((work / "calibration.json").read_text()),
                       rec)


if __name__ == "__main__":
  absltest.main()
