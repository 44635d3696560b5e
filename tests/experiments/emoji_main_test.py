"""The main job: configs/emoji.py, its plan, and a two-plan generate run.

The run uses the shipped weights (`embedded:emoji`) and real MiniLM text
features at the smallest size that still exercises everything (1 caption,
1 sample, dense + emoji_default). One test checks that the trained weights
draw a red apple red.
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

from configs import emoji as emoji_config
from experiments import generate
from toprovar_jax import flops
from toprovar_jax import io
from toprovar_jax import pipeline
from toprovar_jax.data import emoji as emoji_data
from toprovar_jax.models import config as config_lib
from toprovar_jax.sampling import conditions as conditions_lib
from toprovar_jax.sparsity import named
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.text import features

FLAGS = flags.FLAGS
_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "emoji.py")
_EMOJI = config_lib.get_variant("emoji")
_SIDE = 128  # 32x32 latent, BSQ stride 4


def _run(workdir, *extra, arg=""):
  """`python -m experiments.generate` on configs/emoji.py, in this process."""
  argv = ["generate", f"--config={_CONFIG}{':' + arg if arg else ''}",
          f"--workdir={workdir}", *extra]
  with flagsaver.flagsaver(), mock.patch.object(sys, "argv", argv):
    generate.main(FLAGS(argv))


def _read_png(path):
  with Image.open(path) as img:
    return np.asarray(img)


class EmojiConfigTest(absltest.TestCase):

  def test_resolves_to_dense_and_emoji_default(self):
    config = emoji_config.get_config()
    self.assertTrue(config.is_locked)
    self.assertEqual(config.model.variant, "emoji")
    self.assertEqual(config.ckpt.transformer, "embedded:emoji")
    self.assertEqual(config.ckpt.tokenizer, "embedded:emoji")
    self.assertEqual(config.sampling.text_len, _EMOJI.text_maxlen)
    self.assertEqual(pipeline.plan_specs(config), ("dense", "emoji_default"))
    samplers = pipeline.samplers_from_config(config)
    self.assertEqual([s.resolved_plan.name for s in samplers],
                     ["dense", "emoji_default"])
    self.assertEqual(samplers[0].resolved_plan, plan_lib.dense_plan(_EMOJI))
    # One image per caption, all in one batch (0): counted from the
    # captions the run ends up with (pipeline, runner).
    self.assertEqual(pipeline.num_samples_from_config(config, _EMOJI),
                     len(emoji_config.PROMPTS))
    self.assertEqual(config.sampling.batch_size, 0)
    self.assertEqual(samplers[0].execution.kv_read, "buffer")

  def test_captions_are_dataset_captions(self):
    # The training captions are these names (experiments/build_emoji_dataset
    # drops only emoji the font cannot render; these six it renders).
    captions = {e.caption for e in emoji_data.list_emoji()}
    self.assertContainsSubset(emoji_config.PROMPTS, captions)

  def test_arguments(self):
    config = emoji_config.get_config("samples=2,compare=,ckpt_dir=/w")
    self.assertEqual(pipeline.plan_specs(config), ("dense",))
    self.assertEqual(config.sampling.samples_per_prompt, 2)
    self.assertEqual(pipeline.num_samples_from_config(config, _EMOJI),
                     2 * len(emoji_config.PROMPTS))
    self.assertEqual(config.ckpt.transformer, "/w/transformer")
    config = emoji_config.get_config("plan=emoji_paper,compare=dense")
    self.assertEqual(pipeline.plan_specs(config), ("emoji_paper", "dense"))
    with self.assertRaisesRegex(ValueError, "'samples'"):
      emoji_config.get_config("samples=0")
    with self.assertRaisesRegex(ValueError, "'batch_size': must be >= 0"):
      emoji_config.get_config("batch_size=-1")

  def test_default_plan(self):
    # toprovar_jax/sparsity/plans/README.md, emoji_default: dense to 12x12,
    # then layers 3-15 keep half the tokens and restore the rest from the
    # 12x12 branches (scales 16x16, 24x24, 32x32, indices 10-12).
    plan = named.load_plan("emoji_default", _EMOJI)
    self.assertEqual(plan.name, "emoji_default")
    self.assertEqual(plan.schedule, _EMOJI.schedule)
    for s, (sp, (h, w)) in enumerate(zip(plan.scales, plan.schedule)):
      if s < 10:
        self.assertEqual((sp.keep, sp.layers), (h * w, "F" * 16))
      else:
        self.assertEqual((sp.keep, sp.layers, sp.probe_layer, sp.scorer,
                          sp.restore, sp.cache_from),
                         (h * w // 2, "FFF" + "S" * 13, 2, "entropy",
                          "cached", 9))
    self.assertAlmostEqual(flops.speedup(plan, _EMOJI, text_tokens=32), 1.76,
                           delta=0.01)

  def test_plan_validates_and_saves_flops(self):
    plan = named.load_plan("emoji_paper", _EMOJI)
    self.assertEqual(plan.name, "emoji_paper")
    self.assertEqual(plan.schedule, _EMOJI.schedule)
    self.assertIsNone(plan.exit_scale)
    # Pruned from the 16x16 scale on (layers 3-14), keeping a multiple of 8
    # below N_s; layers 0-2 and 15 stay F.
    for s, (sp, (h, w)) in enumerate(zip(plan.scales, plan.schedule)):
      if s < 10:
        self.assertEqual((sp.keep, sp.layers), (h * w, "F" * 16))
      else:
        self.assertLess(sp.keep, h * w)
        self.assertEqual(sp.keep % 8, 0)
        self.assertEqual((sp.layers, sp.probe_layer, sp.restore),
                         ("FFF" + "S" * 12 + "F", 2, "passthrough"))
    self.assertAlmostEqual(flops.speedup(plan, _EMOJI, text_tokens=32), 2.08,
                           delta=0.01)

  def test_bad_compared_plan_names_the_field(self):
    config = emoji_config.get_config("compare=emoji_paper+no_such_plan")
    with self.assertRaisesRegex(plan_lib.PlanError,
                                r"config.sparsity.compare\[1\].*no_such_plan"):
      pipeline.samplers_from_config(config)

  def test_repeated_plan_names_the_field(self):
    config = emoji_config.get_config("compare=emoji_paper+dense")
    with self.assertRaisesRegex(ValueError, "sparsity.compare.*'dense'"):
      pipeline.samplers_from_config(config)

  def test_minilm_features_for_the_emoji_model(self):
    cond = conditions_lib.make_conditions(_EMOJI, prompts=("red apple",),
                                    text_len=32)
    self.assertEqual(cond.text_features, features.MINILM_TEXT)
    # [CLS] red apple [SEP]
    self.assertEqual(cond.text_lengths, (4,))
    self.assertEqual(cond.text.shape, (1, 32, 384))
    self.assertTrue(cond.text_mask[0, :4].all())
    self.assertFalse(cond.text_mask[0, 4:].any())
    np.testing.assert_array_equal(cond.text[0, 4:], 0.0)
    self.assertGreater(np.abs(cond.text[0, :4]).mean(), 0.0)


class EmojiGenerateTest(absltest.TestCase):
  """One run of the main job, shrunk to 1 caption x 1 sample."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    cls.workdir = os.path.join(cls.root, "main")
    _run(cls.workdir, "--config.sampling.prompts=('red apple',)",
         "--config.sampling.num_samples=1", "--config.sampling.batch_size=1")
    with open(os.path.join(cls.workdir, "results.json")) as f:
      cls.results = json.load(f)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def test_files(self):
    self.assertEqual(
        sorted(os.listdir(self.workdir)),  # no temp files left behind
        ["config.json", "grid.png", "grid_dense.png", "grid_emoji_default.png",
         "results.json", "sample_dense_0000.png",
         "sample_emoji_default_0000.png"])
    for name in ("sample_dense_0000.png", "sample_emoji_default_0000.png"):
      image = _read_png(os.path.join(self.workdir, name))
      self.assertEqual(image.shape, (_SIDE, _SIDE, 3))
      self.assertEqual(image.dtype, np.uint8)
    grid = _read_png(os.path.join(self.workdir, "grid.png"))
    # A header strip, then two rows (one per plan) of one 128-px tile, with
    # the 200-px label strip on the left.
    self.assertEqual(grid.shape[1], 200 + 2 + _SIDE + 2)
    self.assertGreater(grid.shape[0], 2 * (_SIDE + 2) + 2)

  def test_results(self):
    r = self.results
    self.assertEqual(r["model"], "emoji")
    self.assertEqual((r["params_source"], r["tokenizer_source"]),
                     ("embedded:emoji", "embedded:emoji"))
    self.assertIsInstance(r["params_step"], int)
    self.assertIsInstance(r["tokenizer_step"], int)
    self.assertEqual(r["text_features"], features.MINILM_TEXT)
    self.assertEqual(r["prompts"], ["red apple"])
    self.assertEqual(r["plan"], "dense")
    self.assertEqual(r["grid"], "grid.png")
    self.assertEqual([p["name"] for p in r["plans"]],
                     ["dense", "emoji_default"])
    dense, sparse = r["plans"]
    self.assertEqual(dense["flop_speedup_vs_dense"], 1.0)
    self.assertIsNone(dense["similarity_to_reference"])
    self.assertGreater(sparse["flop_speedup_vs_dense"], 1.75)
    self.assertLess(sparse["flops_per_image"], dense["flops_per_image"])
    sim = sparse["similarity_to_reference"]
    self.assertEqual(sim["reference"], "dense")
    self.assertGreaterEqual(sim["mean_abs_diff"], 0.0)
    self.assertLen(sim["per_sample_psnr_db"], 1)
    for plan in r["plans"]:
      for key in ("compile_generate_s", "generate_s", "decode_s"):
        self.assertGreater(plan["timings"][key], 0.0)
    self.assertEqual(sparse["files"], ["sample_emoji_default_0000.png"])
    self.assertEqual(r["samples"][0]["text_tokens"], 4)

  def test_trained_weights_draw_a_red_apple(self):
    # The shipped weights are trained (the dry run stops at 3 steps; v2
    # shipped at step 570): the "red apple" sample, over its non-background
    # pixels, is red, by a wide margin, under both plans.
    self.assertGreater(self.results["params_step"], 500)
    for name in ("sample_dense_0000.png", "sample_emoji_default_0000.png"):
      image = _read_png(os.path.join(self.workdir, name)).astype(float)
      fg = image[image.min(-1) < 200]  # not the near-white background
      self.assertGreater(len(fg), 0.2 * _SIDE * _SIDE, name)
      r, g, b = fg.mean(0)
      self.assertGreater(r, g + 60, name)
      self.assertGreater(r, b + 60, name)

  def test_bad_compared_plan_fails_before_the_workdir_is_made(self):
    workdir = os.path.join(self.root, "never")
    with self.assertRaisesRegex(plan_lib.PlanError, "sparsity.compare"):
      _run(workdir, "--config.sparsity.compare=emoji_default,bogus")
    self.assertFalse(os.path.exists(workdir))

  def test_existing_workdir_is_refused(self):
    with self.assertRaisesRegex(io.WorkdirNotEmptyError, "--overwrite"):
      _run(self.workdir)


if __name__ == "__main__":
  absltest.main()
