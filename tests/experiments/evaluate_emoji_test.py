"""End to end: `experiments/evaluate_emoji.py` on a tiny model and dataset.

Everything it reads is made here in a temp folder, so the test runs from a
clean clone: a 10-emoji, 32 px dataset (3 held out), MiniLM-shaped caption
features, and exports of freshly initialised `_emoji_tiny` models written by
`weights.shards.write_shards` (the format of the shipped weights). Random
weights make meaningless images; the test checks what the run measures and writes,
not how good the images are.

The main runs in a subprocess: absl flags of several experiments/*.py mains
(--workdir, --overwrite) would clash in one pytest process.
"""

import functools
import json
import os
import pathlib
import subprocess
import sys
import tempfile

from absl.testing import absltest
import jax
import numpy as np
import optax
from PIL import Image

from toprovar_jax.data import emoji
from toprovar_jax.models import transformer
from toprovar_jax.training import data as training_data
from toprovar_jax.training import tokenizer
from toprovar_jax.weights import shards

_ROOT = pathlib.Path(__file__).resolve().parents[2]
_VARIANT = "_emoji_tiny"
_SIZE = 32
_CAPTIONS = ("keycap 1", "red apple", "green apple", "grinning face", "sun",
             "dog face", "moon", "cat face", "blue heart", "red heart")
_HELD = ("green apple", "moon", "cat face")
_TEXT_LEN, _TEXT_DIM = 32, 384  # encode_captions' layout; the model cuts
_TRAIN, _PER_CAPTION, _GRID_ROWS = 4, 2, 2


def _write_inputs(root: pathlib.Path):
  """Dataset npz, caption npz and the two exports under `root`."""
  rng = np.random.default_rng(0)
  n = len(_CAPTIONS)
  images = np.zeros((n, _SIZE, _SIZE, 4), np.uint8)
  for i in range(n):  # an opaque coloured square, different per emoji
    lo, hi = 4 + i % 5, 24 + i % 7
    images[i, lo:hi, lo:hi, :3] = rng.integers(0, 255, 3)
    images[i, lo:hi, lo:hi, 3] = 255
  emoji.save_dataset(root / "emoji.npz", emoji.EmojiDataset(
      images=images, captions=np.array(_CAPTIONS),
      codepoints=np.array([f"1F{600 + i}" for i in range(n)]),
      heldout=np.array([c in _HELD for c in _CAPTIONS]), metadata={}))
  mask = np.zeros((n, _TEXT_LEN), bool)
  mask[:, :4] = True
  np.savez(root / "captions.npz", captions=np.array(_CAPTIONS),
           token_features=rng.normal(size=(n, _TEXT_LEN, _TEXT_DIM)).astype(
               np.float16),
           mask=mask, sentence_embedding=rng.normal(
               size=(n, _TEXT_DIM)).astype(np.float32))
  model, tok = training_data.get_models(_VARIANT)
  # Jitted without XLA's optimisation passes: 4 s here, 23 s op by op.
  fast = dict(compiler_options={"xla_backend_optimization_level": 0})
  tok_params = jax.jit(lambda k: tokenizer.init_state(
      tok, k, optax.identity()).params, **fast)(jax.random.key(1))
  shards.write_shards(root / "tok", {"params": tok_params}, name="tokenizer")
  shards.write_shards(root / "tf", jax.jit(functools.partial(
      transformer.init_params, model), **fast)(jax.random.key(2)),
                      name="transformer")


def _run(root: pathlib.Path, workdir: pathlib.Path, main="evaluate_emoji"):
  argv = [sys.executable, "-m", f"experiments.{main}",
          f"--workdir={workdir}", f"--tokenizer={root / 'tok'}",
          f"--transformer={root / 'tf'}", f"--variant={_VARIANT}",
          f"--dataset={root / 'emoji.npz'}",
          f"--captions={root / 'captions.npz'}",
          f"--samples_per_caption={_PER_CAPTION}", "--batch_size=4"]
  if main == "evaluate_emoji":
    argv += [f"--num_train_captions={_TRAIN}", f"--grid_rows={_GRID_ROWS}",
             f"--out_docs={root / 'docs'}"]
  else:  # two temperatures, one top-p: one compile
    argv += [f"--num_captions={_TRAIN}", "--cfg_scales=3", "--taus=0.5,1",
             "--top_ps=0.97"]
  # One CPU device, as a user's run has: conftest's four fake devices are
  # for the sharding tests (here they made the run ~25% slower).
  xla_flags = " ".join(
      f for f in os.environ.get("XLA_FLAGS", "").split()
      if not f.startswith("--xla_force_host_platform_device_count"))
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(_ROOT),
             XLA_FLAGS=xla_flags)
  return subprocess.run(argv, cwd=_ROOT, env=env, capture_output=True,
                        text=True, timeout=600, check=False)


def _png_shape(path):
  with Image.open(path) as img:
    return np.asarray(img).shape


class EvaluateEmojiTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    cls.root = pathlib.Path(cls.tmp.name)
    _write_inputs(cls.root)
    cls.workdir = cls.root / "eval"
    cls.proc = _run(cls.root, cls.workdir)
    if cls.proc.returncode == 0:
      cls.results = json.loads((cls.workdir / "results.json").read_text())

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def setUp(self):
    super().setUp()
    self.assertEqual(self.proc.returncode, 0, self.proc.stderr[-3000:])

  def test_files(self):
    grids = ["grid_heldout", "grid_train", "samples_heldout",
             "samples_heldout_all", "samples_train", "samples_train_all",
             "tokenizer_reconstructions"]
    # Nothing else: no temp files left behind.
    self.assertEqual(sorted(os.listdir(self.workdir)),
                     sorted([f"{g}.png" for g in grids] + ["results.json"]))
    self.assertEqual(
        sorted(os.listdir(self.root / "docs")),
        ["grid_heldout.png", "grid_train.png", "results.json",
         "samples_heldout.png", "samples_train.png",
         "tokenizer_reconstructions.png"])
    self.assertEqual(self.results["files"], [f"{g}.png" for g in grids])
    # Rows: caption strip (200 px), the emoji, then the samples; 2 px pads.
    tile = _SIZE + 2
    self.assertEqual(_png_shape(self.workdir / "samples_train.png"),
                     (_GRID_ROWS * tile + 2, 200 + (1 + _PER_CAPTION) * tile
                      + 2, 3))
    self.assertEqual(_png_shape(self.workdir / "samples_train_all.png"),
                     (_TRAIN * tile + 2, 200 + (1 + _PER_CAPTION) * tile + 2,
                      3))
    # Columns: a 48 px caption strip, the emoji, then the samples.
    self.assertEqual(_png_shape(self.workdir / "grid_train.png"),
                     (48 + (1 + _PER_CAPTION) * tile + 2,
                      _GRID_ROWS * tile + 2, 3))
    self.assertEqual(
        _png_shape(self.workdir / "tokenizer_reconstructions.png"),
        (_GRID_ROWS * tile + 2, 200 + 2 * tile + 2, 3))

  def test_caption_sets(self):
    train = [p["caption"] for p in self.results["train"]["per_caption"]]
    # The common captions first, in order, then a fixed training caption.
    self.assertEqual(train[:3], ["red apple", "grinning face", "dog face"])
    self.assertLen(train, _TRAIN)
    self.assertNotIn(train[3], _HELD)
    held = [p["caption"] for p in self.results["heldout"]["per_caption"]]
    self.assertEqual(held, list(_HELD))  # all of them, dataset order

  def test_metrics(self):
    n = len(_CAPTIONS)
    for name, c in (("train", _TRAIN), ("heldout", len(_HELD))):
      s = self.results[name]
      self.assertEqual(s["num_samples"], c * _PER_CAPTION)
      ranks = [r for p in s["per_caption"] for r in p["ranks"]]
      self.assertLen(ranks, c * _PER_CAPTION)
      self.assertTrue(all(1 <= r <= n for r in ranks))
      self.assertAlmostEqual(s["top5"], np.mean(np.array(ranks) <= 5))
      self.assertLessEqual(s["top1"], s["top5"])
      cons = s["consistency"]
      for key in ("neighbour_auc", "random_neighbour_auc",
                  "true_emoji_neighbour_auc", "neighbour_win_rate",
                  "nearest_caption_top5"):
        self.assertBetween(cons[key], 0.0, 1.0)
      self.assertBetween(s["shuffled_baseline"]["top5"], 0.0, 1.0)
    tok = self.results["tokenizer"]
    self.assertEqual(tok["num_images"], len(_HELD))
    self.assertTrue(np.isfinite(tok["psnr"]) and tok["psnr"] > 0)
    self.assertBetween(tok["ssim"], -1.0, 1.0)
    train = self.results["train"]
    self.assertEqual(self.results["target"]["met"],
                     train["top1"] >= 0.85 and train["top5"] >= 0.97)
    for name, c in (("train", _TRAIN), ("heldout", len(_HELD))):
      div = self.results[name]["diversity"]
      self.assertLen(div["per_caption"], c)
      self.assertAlmostEqual(div["within"], np.mean(div["per_caption"]))
      self.assertGreaterEqual(div["within"], 0.0)
      self.assertGreater(div["between"], 0.0)
      bg = self.results[name]["background_deviation"]
      self.assertEqual(bg["num_images"], c * _PER_CAPTION)
      self.assertBetween(bg["mean"], 0.0, 255.0)
      # 32 px emoji leave no position that is background in half of them.
      self.assertIsNone(bg["peak"])
    self.assertEqual(self.results["tokenizer"]["background_deviation"][
                     "num_images"],
                     len(_HELD))
    for key in ("tokenizer_eval_s", "compile_generate_s", "generate_s",
                "decode_s", "lpips_s", "total_s"):
      self.assertGreaterEqual(self.results["timings"][key], 0.0)
    self.assertEqual(self.results["model"], _VARIANT)
    self.assertEqual(self.results["sources"]["tokenizer_step"], 0)
    self.assertEqual(self.results["num_emoji"], n)

  def test_sampling_sweep(self):
    workdir = self.root / "sweep"
    proc = _run(self.root, workdir, main="sweep_emoji_sampling")
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    got = json.loads((workdir / "results.json").read_text())
    self.assertEqual(sorted(p.name for p in workdir.iterdir()),
                     ["results.json"])
    self.assertEqual([(r["cfg_scale"], r["tau"], r["top_p"])
                      for r in got["rows"]], [(3.0, 0.5, 0.97),
                                              (3.0, 1.0, 0.97)])
    self.assertEqual((got["num_captions"], got["samples_per_caption"]),
                     (_TRAIN, _PER_CAPTION))
    for row in got["rows"]:
      self.assertLessEqual(row["top1"], row["top5"])
      self.assertBetween(row["median_rank"], 1, len(_CAPTIONS))
      self.assertGreaterEqual(row["diversity"]["within"], 0.0)
      self.assertNotIn("per_caption", row["diversity"])

  def test_refuses_a_used_workdir(self):
    proc = _run(self.root, self.workdir)
    self.assertNotEqual(proc.returncode, 0)
    self.assertIn("--overwrite", proc.stderr)


if __name__ == "__main__":
  absltest.main()
