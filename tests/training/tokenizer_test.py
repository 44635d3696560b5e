"""Tests of tokenizer training, its evaluation, and experiments/train.py.

A tiny BSQ VAE (stride 4, no encoder res-blocks) on 32 px images compiles in
seconds on CPU. The end-to-end test runs `experiments/train.py` in a
subprocess (absl flags of several experiments/*.py mains would clash in the
pytest process) on a 12-emoji dataset rendered from the real font. That
subprocess starts in `setUpModule` and runs while the in-process tests run:
XLA compiles on one core, so the two overlap on a two-core machine.
"""

import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from tests.metrics import image_test
from toprovar_jax.data import emoji
from toprovar_jax.models import bsq_vae
from toprovar_jax.models import config as config_lib
from toprovar_jax.training import data as training_data
from toprovar_jax.training import loop
from toprovar_jax.training import tokenizer

_ROOT = pathlib.Path(__file__).resolve().parents[2]
# The test-only variant: stride 4, 32 px images -> an 8x8 grid, 4 scales.
_MODEL, _TOK = training_data.get_models("_emoji_tiny")
_SCHEDULE = _MODEL.schedule
_B, _SIZE, _STEPS = 16, 32, 20


def _smooth_images(seed=0):
  """(16, 32, 32, 3) in [-1, 1]: random 4x4 colour fields, upsampled."""
  coarse = np.random.default_rng(seed).uniform(-1, 1, (_B, 4, 4, 3))
  return jax.image.resize(jnp.asarray(coarse, jnp.float32),
                          (_B, _SIZE, _SIZE, 3), "linear")


_quantize = jax.jit(tokenizer.st_multiscale_quantize,
                    static_argnames=("schedule", "flip_prob"))


def _latent(seed=0):
  """(2, 8, 8, 8) float32 raw latent (numpy: no PRNG kernel to compile)."""
  return np.random.default_rng(seed).normal(size=(2, 8, 8, 8)).astype(
      np.float32)


class QuantizerTest(absltest.TestCase):

  def test_forward_equals_inference_quantiser(self):
    h = _latent()
    z, commit, bit_mean = _quantize(h, _SCHEDULE)
    _, z_ref = jax.jit(bsq_vae.multiscale_quantize, static_argnums=1)(
        h, _SCHEDULE)
    # Equal to within an ulp: under jit XLA may fuse u + (zhat - u)
    # differently in the two programs (eagerly they are bit-identical).
    np.testing.assert_allclose(z, z_ref, atol=2e-7)
    self.assertBetween(float(commit), 0.0, 4.0 / 8)
    self.assertBetween(float(bit_mean), 0.3, 0.7)

  def test_straight_through_gradient(self):
    h, target = _latent(), _latent(seed=1)
    grad = jax.jit(jax.grad(lambda h: jnp.sum(
        tokenizer.st_multiscale_quantize(h, _SCHEDULE)[0] * target)))(h)
    self.assertTrue(np.all(np.isfinite(grad)))
    self.assertGreater(float(jnp.abs(grad).mean()), 1e-3)
    # The inference quantiser passes no gradient at all.
    grad_ref = jax.jit(jax.grad(lambda h: jnp.sum(
        bsq_vae.multiscale_quantize(h, _SCHEDULE)[1] * target)))(h)
    np.testing.assert_array_equal(grad_ref, 0.0)

  def test_flips_change_the_sum(self):
    h = _latent()
    z0, _, _ = _quantize(h, _SCHEDULE)
    # RBG: threefry's bernoulli compiles slowly on CPU.
    z1, _, _ = _quantize(h, _SCHEDULE, rng=jax.random.key(3, impl="rbg"),
                         flip_prob=0.2)
    self.assertGreater(float(jnp.abs(z1 - z0).max()), 0.1)

  def test_default_schedule(self):
    self.assertEqual(tokenizer.default_schedule((32, 32)),
                     config_lib.square_schedule(config_lib.EMOJI_SIDES))
    self.assertEqual(tokenizer.default_schedule((16, 16)),
                     config_lib.square_schedule(
                         (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16)))
    self.assertEqual(tokenizer.default_schedule((8, 8)),
                     ((1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7),
                      (8, 8)))


class TrainStepTest(absltest.TestCase):

  def test_loss_decreases(self):
    tx, _ = loop.make_optimizer(learning_rate=2e-3, total_steps=100,
                                warmup_steps=1, grad_clip=1.0, b2=0.99)
    objective = tokenizer.TokenizerObjective(schedule=_SCHEDULE)
    # An RBG key: its init compiles ~3x faster than threefry's on CPU.
    state = jax.jit(functools.partial(tokenizer.init_state, _TOK, tx=tx))(
        jax.random.key(0, impl="rbg"))
    step = jax.jit(functools.partial(tokenizer.train_step, tok_cfg=_TOK,
                                     tx=tx, objective=objective),
                   donate_argnums=0)
    images = _smooth_images()
    losses = []
    for _ in range(_STEPS):
      state, metrics = step(state, images, jax.random.key(1))
      losses.append(float(metrics["loss"]))
    self.assertEqual(int(state.step), _STEPS)
    self.assertTrue(np.all(np.isfinite(losses)))
    self.assertLess(np.mean(losses[-3:]), 0.6 * np.mean(losses[:3]))
    self.assertEqual(set(metrics), {"loss", "l1", "l2", "commit", "psnr",
                                    "bit_mean", "grad_norm"})
    self.assertGreater(float(metrics["psnr"]), 10.0)


class EvaluateTest(absltest.TestCase):
  """`evaluate` around a fake `reconstruct` with a known error."""

  def test_padding_and_golden_psnr(self):
    images = np.random.default_rng(0).integers(20, 236, (16, 32, 32, 3),
                                               dtype=np.uint8)
    sign = np.where(np.indices((32, 32)).sum(0) % 2, 5, -5)[..., None]
    calls = []

    def fake_reconstruct(params, x, *, tok_cfg, schedule):
      del params, tok_cfg, schedule
      calls.append(x.shape[0])
      back = np.round((np.asarray(x) + 1.0) * 127.5).astype(np.int32)
      return jnp.asarray((back + sign).astype(np.uint8))

    with mock.patch.object(tokenizer, "reconstruct", fake_reconstruct):
      kw = dict(tok_cfg=_TOK, schedule=_SCHEDULE, batch_size=12)
      result = tokenizer.evaluate({}, images, **kw)
      rec = tokenizer.reconstruct_images({}, images, **kw)
    self.assertEqual(calls, [12, 12, 12, 12])  # 16 -> 12 + 12 (padded)
    # +-5 levels everywhere: MSE (5/255)^2 -> 20 log10(255 / 5) dB.
    self.assertAlmostEqual(result["psnr"], 20 * np.log10(255 / 5), places=3)
    self.assertAlmostEqual(
        result["ssim"], image_test.reference_ssim(rec / 255.0, images / 255.0).mean(),
        places=4)
    np.testing.assert_array_equal(rec.astype(int) - images, sign + 0 * images)


def _train_command(root, *flags):
  return [sys.executable, "-m", "experiments.train",
          "--config=configs/emoji_train.py:stage=tokenizer,tiny",
          f"--config.data.dataset={root / 'emoji_32.npz'}",
          f"--workdir={root / 'run'}", *flags]


_E2E = {}  # root: temp folder; proc: the background training command


def _subprocess_env():
  # XLA -O0 halves compile time; six steps do not miss the optimisation.
  flags = os.environ.get("XLA_FLAGS", "")
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"{flags} --xla_backend_optimization_level=0")


def setUpModule():  # pylint: disable=invalid-name
  root = pathlib.Path(tempfile.mkdtemp())
  dataset = emoji.make_dataset(image_size=32, heldout_frac=0.25,
                               entries=emoji.list_emoji()[:12])
  emoji.save_dataset(root / "emoji_32.npz", dataset)
  _E2E["root"] = root
  _E2E["proc"] = subprocess.Popen(
      _train_command(root), cwd=_ROOT, env=_subprocess_env(),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def tearDownModule():  # pylint: disable=invalid-name
  proc = _E2E.get("proc")
  if proc is not None and proc.poll() is None:
    proc.kill()
    proc.communicate()
  shutil.rmtree(_E2E.get("root", ""), ignore_errors=True)


class TrainScriptTest(absltest.TestCase):
  """`python -m experiments.train` on `configs/emoji_train.py:...,tiny`."""

  def test_tokenizer_stage_end_to_end(self):
    root = _E2E["root"]
    workdir = root / "run"
    _, stderr = _E2E["proc"].communicate(timeout=300)
    self.assertEqual(_E2E["proc"].returncode, 0, stderr[-3000:])
    results = json.loads((workdir / "results.json").read_text())
    self.assertEqual(results["step"], 6)
    self.assertTrue(results["done"])
    run = results["runs"][0]
    self.assertEqual((run["start_step"], run["end_step"]), (0, 6))
    self.assertBetween(run["eval"]["ssim"], -1.0, 1.0)
    self.assertGreater(run["eval"]["psnr"], 0.0)
    for name in ("config.json", "metrics.jsonl", "curves.json", "curves.png",
                 "reconstructions.png", "export/tokenizer.manifest.json",
                 "export/tokenizer_000.npz", "checkpoints/6"):
      self.assertTrue((workdir / name).exists(), name)
    rows = [json.loads(line) for line in
            (workdir / "metrics.jsonl").read_text().splitlines()]
    self.assertEqual([r["step"] for r in rows if "train/loss" in r],
                     [2, 4, 6])
    self.assertEqual([r["step"] for r in rows if "eval/psnr" in r], [6])
    with Image.open(workdir / "reconstructions.png") as img:
      # 3 held-out emoji: one row of originals over one of reconstructions.
      self.assertEqual(img.size, (3 * 34 + 2, 2 * 34 + 2))
    # The export loads back in the pipeline's tokenizer layout.
    params = tokenizer.load_trained(str(workdir), _TOK)
    self.assertEqual(set(params), {"params"})

    # Another config in the same workdir is refused before any training.
    refused = subprocess.run(
        _train_command(root, "--config.optim.learning_rate=0.5"), cwd=_ROOT,
        env=_subprocess_env(), capture_output=True,
        text=True, timeout=120)
    self.assertNotEqual(refused.returncode, 0)
    self.assertIn("optim.learning_rate", refused.stderr)


if __name__ == "__main__":
  absltest.main()
