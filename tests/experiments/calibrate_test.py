"""End to end: `experiments/calibrate.py` on configs/tiny.py (infinity_tiny).

Two calibration images (random weights), then budget mode with one
generation: a target every plan meets, so the binary search's first
candidate is chosen; its plan.json loads as `config.sparsity.plan`.
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
from toprovar_jax.models import config as config_lib
from toprovar_jax.sparsity import named

FLAGS = flags.FLAGS
_TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "tiny.py")


class CalibrateMainTest(absltest.TestCase):

  def test_budget_mode_writes_a_plan_that_loads(self):
    with tempfile.TemporaryDirectory() as d:
      prompts = pathlib.Path(d) / "prompts.txt"
      prompts.write_text("a red apple\n\na small blue car\n")
      work = pathlib.Path(d) / "run"
      argv = ["calibrate", f"--config={_TINY}:model=infinity_tiny",
              f"--prompts={prompts}", "--num_images=2", f"--workdir={work}",
              "--rep_side=8", "--target_ssim=-1", "--max_evals=1"]
      with flagsaver.flagsaver(), mock.patch.object(sys, "argv", argv):
        calibrate.main(FLAGS(argv))
      names = {p.name for p in work.iterdir()}
      self.assertLessEqual({"plan.json", "calibration.json", "frontier.json",
                            "frontier.png", "rho_s.png", "layer_ratio.png",
                            "entropy_maps.png", "dense"}, names)
      frontier = json.loads((work / "frontier.json").read_text())
      self.assertEqual(frontier["num_evaluated"], 1)
      (tried,) = frontier["plans"]
      self.assertTrue(tried["chosen"] and tried["meets_target"])
      self.assertGreater(tried["flop_speedup"], 1.0)
      self.assertBetween(tried["ssim"], -1.0, 1.0)
      rec = json.loads((work / "calibration.json").read_text())
      self.assertEqual(rec["num_images"], 2)
      self.assertAlmostEqual(rec["flop_speedup"], tried["flop_speedup"])
      model = config_lib.get_variant("infinity_tiny")
      plan = named.load_plan(str(work / "plan.json"), model)
      self.assertEqual([sp.layers for sp in plan.scales], tried["layers"])
      self.assertEqual(plan.name, "calibrated_ssim-1")


if __name__ == "__main__":
  absltest.main()
