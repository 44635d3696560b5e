"""End to end: `experiments/generate.py` on `configs/tiny.py` (SPEC §9, §11).

Runs main in this process (flags parsed from an argv, as `app.run` would),
once per tiny model into a shared workdir; the other tests read those runs
or copy them. Each model compiles once: later runs hit jit's cache, and
changing the seed does not recompile (it is a traced argument).
"""

import json
import os
import shutil
import sys
import tempfile
from unittest import mock

from absl import flags
from absl.testing import absltest
from absl.testing import flagsaver
import numpy as np
from PIL import Image

from experiments import generate
from toprovar_jax import io
from toprovar_jax.text import features
from toprovar_jax.weights import loading

FLAGS = flags.FLAGS
_TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "tiny.py")
_MODELS = ("var_tiny", "infinity_tiny")
_IMAGE_SHAPE = (256, 256, 3)  # both tiny models: 16x16 latent, stride 16


def _run(model, workdir, *extra):
  """`python -m experiments.generate` with these flags, in this process."""
  argv = ["generate", f"--config={_TINY}:model={model},batch_size=2",
          f"--workdir={workdir}", *extra]
  # config_flags reads --config.* overrides from sys.argv.
  with flagsaver.flagsaver(), mock.patch.object(sys, "argv", argv):
    generate.main(FLAGS(argv))


def _snapshot(workdir):
  """{name: (bytes, mtime_ns)} of every file in a folder."""
  out = {}
  for name in sorted(os.listdir(workdir)):
    path = os.path.join(workdir, name)
    with open(path, "rb") as f:
      out[name] = (f.read(), os.stat(path).st_mtime_ns)
  return out


def _read_png(path):
  with Image.open(path) as img:
    return np.asarray(img)


class GenerateTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    cls.workdirs = {}
    for model in _MODELS:
      cls.workdirs[model] = os.path.join(cls.root, model)
      _run(model, cls.workdirs[model])

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def _results(self, workdir):
    with open(os.path.join(workdir, "results.json")) as f:
      return json.load(f)

  def _check_run(self, model):
    workdir = self.workdirs[model]
    self.assertEqual(
        sorted(os.listdir(workdir)),  # no temp files left behind
        ["config.json", "grid.png", "results.json", "sample_0000.png",
         "sample_0001.png"])
    r = self._results(workdir)
    # Every file beside results.json: what an --overwrite rerun replaces.
    self.assertEqual(r["outputs"], ["config.json", "grid.png",
                                    "sample_0000.png", "sample_0001.png"])
    self.assertEqual(r["model"], model)
    self.assertEqual(r["plan"], "dense")
    self.assertEqual(r["params_source"], loading.RANDOM_INIT)
    self.assertEqual(r["tokenizer_source"], loading.RANDOM_INIT)
    self.assertEqual(r["seeds"], [0])
    self.assertEqual((r["num_samples"], r["batch_size"]), (2, 2))
    self.assertEqual(r["image_shape"], list(_IMAGE_SHAPE))
    # The default mesh: one data axis over conftest's 4 CPU devices.
    self.assertEqual((r["mesh"], r["device_count"], r["process_count"]),
                     ({"data": 4}, 4, 1))
    for key in ("init_or_load_s", "compile_generate_s", "compile_decode_s",
                "generate_s", "decode_s"):
      self.assertGreater(r["timings"][key], 0.0)
    self.assertEqual([s["file"] for s in r["samples"]],
                     ["sample_0000.png", "sample_0001.png"])
    for s in r["samples"]:
      image = _read_png(os.path.join(workdir, s["file"]))
      self.assertEqual(image.shape, _IMAGE_SHAPE)
      self.assertEqual(image.dtype, np.uint8)
      self.assertGreater(image.std(), 0.0)
    grid = _read_png(os.path.join(workdir, r["grid"]))
    self.assertEqual(grid.shape, (2 + 256 + 2, 2 * (256 + 2) + 2, 3))
    with open(os.path.join(workdir, "config.json")) as f:
      config = json.load(f)
    self.assertEqual(config["model"]["variant"], model)
    self.assertEqual(config["sampling"]["batch_size"], 2)
    return r

  def test_var_tiny_run(self):
    r = self._check_run("var_tiny")
    self.assertEqual(r["labels"], [207, 88])
    self.assertEqual([s["label"] for s in r["samples"]], [207, 88])
    self.assertIsNone(r["text_features"])

  def test_infinity_tiny_run(self):
    r = self._check_run("infinity_tiny")
    self.assertEqual(r["prompts"], ["a red apple", "a small blue car"])
    self.assertEqual(r["text_features"], features.PLACEHOLDER_TEXT)
    self.assertEqual([s["text_tokens"] for s in r["samples"]], [4, 5])

  def test_non_empty_workdir_is_refused_and_left_untouched(self):
    workdir = self.workdirs["var_tiny"]
    before = _snapshot(workdir)
    with self.assertRaisesRegex(io.WorkdirNotEmptyError, "--overwrite"):
      _run("var_tiny", workdir)
    self.assertEqual(_snapshot(workdir), before)

  def test_overwrite_replaces_outputs_and_keeps_other_files(self):
    workdir = os.path.join(self.root, "overwrite")
    shutil.copytree(self.workdirs["var_tiny"], workdir)
    with open(os.path.join(workdir, "notes.txt"), "w") as f:
      f.write("mine")
    old = _read_png(os.path.join(workdir, "sample_0000.png"))
    # A new seed is a traced input: same executable, new images.
    _run("var_tiny", workdir, "--overwrite", "--config.sampling.seed=5")
    r = self._results(workdir)
    self.assertEqual(r["seeds"], [5])
    self.assertFalse(np.array_equal(
        _read_png(os.path.join(workdir, "sample_0000.png")), old))
    with open(os.path.join(workdir, "notes.txt")) as f:
      self.assertEqual(f.read(), "mine")

  def test_overwrite_with_fewer_samples_leaves_exactly_the_new_set(self):
    workdir = os.path.join(self.root, "fewer")
    shutil.copytree(self.workdirs["var_tiny"], workdir)
    with open(os.path.join(workdir, "notes.txt"), "w") as f:
      f.write("mine")
    # One image, still in a batch of 2: the compiled program is reused.
    _run("var_tiny", workdir, "--overwrite", "--config.sampling.num_samples=1")
    self.assertEqual(sorted(os.listdir(workdir)),
                     ["config.json", "grid.png", "notes.txt", "results.json",
                      "sample_0000.png"])
    r = self._results(workdir)
    self.assertEqual(r["num_samples"], 1)
    self.assertEqual(r["outputs"], ["config.json", "grid.png",
                                    "sample_0000.png"])

  def test_a_failed_write_leaves_the_previous_run_whole(self):
    workdir = os.path.join(self.root, "failed")
    shutil.copytree(self.workdirs["var_tiny"], workdir)
    before = _snapshot(workdir)
    real, made = io.png_writer, []

    def third_fails(image):  # the 3rd PNG (the grid) cannot be written
      made.append(image)
      if len(made) < 3:
        return real(image)
      def fail(f):
        f.write(b"half")
        raise OSError("disk full")
      return fail
    with mock.patch.object(io, "png_writer", side_effect=third_fails):
      with self.assertRaisesRegex(OSError, "disk full"):
        _run("var_tiny", workdir, "--overwrite", "--config.sampling.seed=9")
    self.assertLen(made, 3)
    self.assertEqual(_snapshot(workdir), before)  # and no staging folder

  def test_bad_config_fails_before_the_workdir_is_made(self):
    workdir = os.path.join(self.root, "never")
    with self.assertRaisesRegex(ValueError, r"sampling.labels\[0\]"):
      _run("var_tiny", workdir, "--config.sampling.labels=(1000,)")
    self.assertFalse(os.path.exists(workdir))


if __name__ == "__main__":
  absltest.main()
