"""End to end: `experiments/evaluate.py` on the tiny Infinity config.

One run (random weights, 2 captions, one batch) on the default mesh (the
4 fake CPU devices of conftest) with four plans: dense, a JSON copy of
dense under another name (same seeds: the same images), a JSON plan that
skips the last two scales and drops guidance from scale 3 (its FLOP
reduction must be the flops module's) and an adaptive (per-image) plan,
which runs unsharded; results.json records the mesh. Bad input stops with
one line naming the field, before any compute, with nothing written.
"""

import contextlib
import io as io_lib
import json
import os
import shutil
import sys
import tempfile
from unittest import mock

from absl import flags
from absl.testing import absltest
from absl.testing import flagsaver
from PIL import Image

from experiments import evaluate
from experiments import launch
from toprovar_jax import flops as flops_lib
from toprovar_jax.models import config as config_lib
from toprovar_jax.sparsity import baselines
from toprovar_jax.sparsity import codec
from toprovar_jax.sparsity import plan as plan_lib

FLAGS = flags.FLAGS
_TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "tiny.py")
_MODEL = "infinity_tiny"
_TEXT_LEN = 32  # configs/tiny.py's static text length
_PROMPTS = "a red apple\n\na small blue car\n"


def _run(workdir, prompts, plans, *extra):
  argv = ["evaluate", f"--config={_TINY}:model={_MODEL},batch_size=2",
          f"--prompts={prompts}", f"--plans={plans}", f"--workdir={workdir}",
          "--seed=3", *extra]
  with flagsaver.flagsaver(), mock.patch.object(sys, "argv", argv):
    launch.guarded(evaluate.main)(FLAGS(argv))


def _strict_json(path):
  def bad(value):
    raise ValueError(f"not strict JSON: {value}")
  with open(path) as f:
    return json.load(f, parse_constant=bad)


class EvaluateTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    cls.prompts = os.path.join(cls.root, "prompts.txt")
    with open(cls.prompts, "w") as f:
      f.write(_PROMPTS)
    model = config_lib.get_variant(_MODEL)
    cls.model = model
    cls.copy = os.path.join(cls.root, "copy.json")
    dense = plan_lib.dense_plan(model)
    with open(cls.copy, "w") as f:
      f.write(codec.plan_to_json(plan_lib.SparsityPlan(
          **{**dense.__dict__, "name": "dense_copy"})))
    skip = baselines.skipvar_plan(model, skip_scales=2, drop_uncond_from=3)
    cls.sparse = plan_lib.SparsityPlan(**{**skip.__dict__,
                                          "name": "sparse_json"})
    cls.sparse_path = os.path.join(cls.root, "sparse.json")
    with open(cls.sparse_path, "w") as f:
      f.write(codec.plan_to_json(cls.sparse))
    # Per image: dense, or skip the last two scales (decided at scale 5).
    cls.adaptive = os.path.join(cls.root, "adaptive.json")
    with open(cls.adaptive, "w") as f:
      json.dump(dict(name="tiny_adaptive", decision_scale=5,
                     statistic_scales=[3, 4],
                     plans=["dense", "skipvar_skip2"], thresholds=[0.5]), f)
    cls.workdir = os.path.join(cls.root, "run")
    _run(cls.workdir, cls.prompts,
         f"{cls.copy},dense,{cls.sparse_path},adaptive:{cls.adaptive}")
    cls.results = _strict_json(os.path.join(cls.workdir, "results.json"))

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def test_files_and_record(self):
    self.assertEqual(sorted(os.listdir(self.workdir)),
                     ["config.json", "frontier.png", "grid.png",
                      "results.json", "results.md"])
    r = self.results
    # What an --overwrite rerun replaces (io.publish): all but results.json.
    self.assertEqual(r["outputs"], ["config.json", "frontier.png",
                                    "grid.png", "results.md"])
    self.assertEqual(r["seed"], 3)
    self.assertEqual(r["prompts"], ["a red apple", "a small blue car"])
    self.assertEqual(r["config"]["model"]["variant"], _MODEL)
    self.assertEqual(r["platform"], "cpu")
    self.assertEqual([p["name"] for p in r["plans"]],
                     ["dense", "dense_copy", "sparse_json", "tiny_adaptive"])
    for p in r["plans"]:
      self.assertGreater(p["latency_s"], 0.0)
      self.assertGreater(p["compile_s"], 0.0)
    with open(os.path.join(self.workdir, "results.md")) as f:
      table = f.read()
    self.assertIn("| dense_copy |", table)
    for name, size in (("frontier.png", (720, 520)), ("grid.png", None)):
      with Image.open(os.path.join(self.workdir, name)) as img:
        if size:
          self.assertEqual(img.size, size)
        else:  # 4 plan rows and 2 caption columns of 256 px tiles
          self.assertEqual(img.size, (220 + 2 * 258 + 2, 48 + 4 * 258 + 2))

  def test_the_mesh_is_recorded(self):
    r = self.results
    self.assertEqual((r["mesh"], r["device_count"], r["process_count"]),
                     ({"data": 4}, 4, 1))
    # Static plans ran on the 4 devices; the per-image plan, whose prefix /
    # suffix programs run only unsharded, on one (mesh null) instead of
    # failing the evaluation.
    self.assertEqual([p["mesh"] for p in r["plans"]],
                     [{"data": 4}] * 3 + [None])
    self.assertEqual(r["plans"][3]["spec"], f"adaptive:{self.adaptive}")

  def test_dense_and_its_copy_are_the_reference(self):
    # The copy is another program with the same seeds: the same images.
    for p in self.results["plans"][:2]:
      self.assertEqual(p["ssim"], 1.0)
      self.assertIsNone(p["psnr"])  # +inf, JSON-valid
      self.assertEqual(p["lpips"], 0.0)
      self.assertLess(p["fd_alexnet"], 1e-6)
      self.assertEqual(p["flop_speedup"], 1.0)
      self.assertEqual(p["identical_images"], 2)

  def test_sparse_plan(self):
    p = self.results["plans"][2]
    want = flops_lib.speedup(self.sparse, self.model, text_tokens=_TEXT_LEN)
    self.assertGreater(want, 1.0)
    self.assertAlmostEqual(p["flop_speedup"], want, places=9)
    self.assertLess(p["ssim"], 1.0)
    self.assertGreater(p["psnr"], 0.0)
    self.assertGreater(p["lpips"], 0.0)
    self.assertEqual(p["identical_images"], 0)

  def _refused(self, workdir, prompts, plans, pattern, *extra):
    """As `python -m experiments.evaluate` fails: one line, exit 2."""
    err = io_lib.StringIO()
    with self.assertRaises(SystemExit) as e, contextlib.redirect_stderr(err):
      _run(workdir, prompts, plans, *extra)
    self.assertEqual(e.exception.code, 2)
    self.assertRegex(err.getvalue(), pattern)
    self.assertEqual(err.getvalue().count("\n"), 1, err.getvalue())

  def test_bad_input_stops_before_anything_is_written(self):
    never = os.path.join(self.root, "never")
    empty = os.path.join(self.root, "empty.txt")
    with open(empty, "w") as f:
      f.write("\n \n")
    self._refused(never, self.prompts, "dense,nope", r"^evaluate: error: "
                  r"--plans: 'nope': .*no named plan 'nope'")
    self._refused(never, self.prompts, "skipvar", r"^evaluate: error: "
                  r"--plans: 'skipvar': field 'plan': 'skipvar' chooses its "
                  r"plan per image .* none ships for infinity_tiny .*"
                  r"experiments/train_skipvar.py and pass 'skipvar:PATH'")
    self._refused(never, os.path.join(self.root, "missing.txt"), "dense",
                  r"^evaluate: error: --prompts: cannot read")
    self._refused(never, empty, "dense",
                  r"^evaluate: error: --prompts: .* holds no")
    self._refused(never, self.prompts, "dense",
                  r"^evaluate: error: --grid_columns",
                  "--grid_columns=0")
    self.assertFalse(os.path.exists(never))
    before = {n: os.stat(os.path.join(self.workdir, n)).st_mtime_ns
              for n in os.listdir(self.workdir)}
    self._refused(self.workdir, self.prompts, "dense",
                  r"^evaluate: error: workdir .* already holds .*--overwrite")
    self.assertEqual(before, {
        n: os.stat(os.path.join(self.workdir, n)).st_mtime_ns
        for n in os.listdir(self.workdir)})


if __name__ == "__main__":
  absltest.main()
