"""Tests of the resumable loop, export, curves and batches (CPU, a toy model).

The toy problem is noisy linear regression with AdamW: it compiles in well
under a second, uses the step key (the noise) and the per-step batches, so
"resumed == uninterrupted" checks the whole determinism chain: checkpointed
optimiser state, per-step keys and per-step data.
"""

import json
import pathlib
import shutil
import tempfile
import time

from absl.testing import absltest
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from PIL import Image

from toprovar_jax.training import curves
from toprovar_jax.training import loop
from toprovar_jax.training import transformer as transformer_training
from toprovar_jax.weights import shards

_DIM = 4
_TRUE_W = np.arange(1.0, _DIM + 1.0, dtype=np.float32)
_TX, _LR_FN = loop.make_optimizer(learning_rate=0.1, total_steps=100,
                                  warmup_steps=2, weight_decay=0.01,
                                  grad_clip=10.0)


def _init():
  params = {"w": jnp.zeros((_DIM,), jnp.float32),
            "b": jnp.zeros((), jnp.float32)}
  return transformer_training.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=_TX.init(params))


def _batch(step):
  rng = np.random.default_rng((7, step))
  x = rng.normal(size=(8, _DIM)).astype(np.float32)
  return dict(x=x, y=x @ _TRUE_W + 0.5)


def _train_step(state, batch, rng, frozen):
  del frozen
  noise = 0.01 * jax.random.normal(jax.random.fold_in(rng, state.step), ())

  def loss_fn(p):
    pred = batch["x"] @ p["w"] + p["b"] + noise
    return jnp.mean(jnp.square(pred - batch["y"]))

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = _TX.update(grads, state.opt_state, state.params)
  params = jax.tree.map(lambda p, u: p + u, state.params, updates)
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state), dict(loss=loss)


def _run(workdir, num_steps, batch_fn=_batch, **config):
  config = dict(dict(checkpoint_every_steps=2, log_every_steps=2,
                     prefetch=2), **config)
  return loop.run(workdir=workdir, init_fn=_init, train_step=_train_step,
                  batch_fn=batch_fn, rng=jax.random.key(0),
                  learning_rate_fn=_LR_FN,
                  eval_fn=lambda s: dict(w_err=float(jnp.abs(
                      s.params["w"] - _TRUE_W).max())),
                  export_fn=lambda s: s.params, export_name="toy",
                  config=loop.LoopConfig(num_steps=num_steps, **config))


def _tempdir(test):
  """A fresh folder removed after the test (no absl flags under pytest)."""
  path = tempfile.mkdtemp()
  test.addCleanup(shutil.rmtree, path, ignore_errors=True)
  return pathlib.Path(path)


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class LoopTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = _tempdir(self)

  def test_resume_matches_uninterrupted_run(self):
    straight = _run(self.root / "straight", 6)
    first = _run(self.root / "resumed", 3)
    second = _run(self.root / "resumed", 6)
    self.assertEqual((first.start_step, first.end_step), (0, 3))
    self.assertEqual((second.start_step, second.end_step), (3, 6))
    self.assertEqual(second.stopped_by, "done")
    _assert_trees_equal(second.state, straight.state)
    # max_to_keep=2: steps 4 and 6 remain.
    kept = sorted(int(p.name) for p in (self.root / "resumed" /
                                        loop.CHECKPOINT_DIR).iterdir()
                  if p.name.isdigit())
    self.assertEqual(kept, [4, 6])
    # Rerunning a finished training changes nothing and trains no step.
    again = _run(self.root / "resumed", 6)
    self.assertEqual((again.start_step, again.end_step), (6, 6))
    _assert_trees_equal(again.state, straight.state)

  def test_metrics_curves_and_export(self):
    result = _run(self.root, 6)
    rows = curves.read_metrics(self.root / loop.METRICS_FILE)
    train_steps = [r["step"] for r in rows if "train/loss" in r]
    self.assertEqual(train_steps, [2, 4, 6])
    self.assertIn("lr", rows[0])
    self.assertGreater(rows[1]["steps_per_sec"], 0)
    self.assertEqual([r["step"] for r in rows if "eval/w_err" in r], [6])
    data = json.loads((self.root / "curves.json").read_text())
    self.assertEqual(data["train/loss"]["steps"], [2, 4, 6])
    self.assertEqual(data["eval/w_err"]["steps"], [6])
    with Image.open(self.root / "curves.png") as img:
      self.assertEqual(img.mode, "RGB")
      self.assertGreater(min(img.size), 100)
      self.assertGreater(len(np.unique(np.asarray(img))), 3)  # not blank
    tree, manifest = shards.load_shards(self.root / loop.EXPORT_DIR, "toy")
    self.assertEqual(manifest["step"], 6)
    self.assertEqual(tree["w"].dtype, ml_dtypes.bfloat16)
    np.testing.assert_array_equal(
        tree["w"], np.asarray(result.state.params["w"]).astype(
            ml_dtypes.bfloat16))
    self.assertEqual(result.eval_metrics.keys(), {"w_err"})

  def test_resume_drops_metrics_after_the_checkpoint(self):
    _run(self.root, 4)
    # A crashed run logged step 6 (and half a line) but saved nothing.
    with open(self.root / loop.METRICS_FILE, "a") as f:
      f.write(json.dumps({"step": 6, "train/loss": 123.0}) + "\n{\"st")
    _run(self.root, 6)
    rows = curves.read_metrics(self.root / loop.METRICS_FILE)
    self.assertNotIn(123.0, [r.get("train/loss") for r in rows])

  def test_time_budget_stops_saves_and_resumes(self):
    def slow_batch(step):
      time.sleep(0.05)
      return _batch(step)

    t0 = time.monotonic()
    result = _run(self.root, 10_000, batch_fn=slow_batch, time_budget_s=3.0,
                  reserve_s=1.0, checkpoint_every_steps=10_000,
                  log_every_steps=5)
    self.assertEqual(result.stopped_by, "time_budget")
    self.assertLess(time.monotonic() - t0, 3.0 + 1.0)
    self.assertBetween(result.end_step, 2, 9_999)
    steps = [p.name for p in (self.root / loop.CHECKPOINT_DIR).iterdir()]
    self.assertIn(str(result.end_step), steps)
    self.assertTrue((self.root / loop.EXPORT_DIR / "toy.manifest.json")
                    .exists())
    self.assertTrue((self.root / "curves.png").exists())
    more = _run(self.root, result.end_step + 2)
    self.assertEqual(more.start_step, result.end_step)
    self.assertEqual(more.end_step, result.end_step + 2)


class ResumeConfigTest(absltest.TestCase):

  def test_check_resume_config(self):
    root = _tempdir(self)
    config = {"lr": 0.1, "budget": 10, "data": {"path": "a"}}
    loop.check_resume_config(root, config, mutable=("budget",))
    loop.check_resume_config(root, dict(config, budget=20),
                             mutable=("budget",))
    with self.assertRaisesRegex(ValueError, "data.path"):
      loop.check_resume_config(root, dict(config, data={"path": "b"}),
                               mutable=("budget",))


if __name__ == "__main__":
  absltest.main()
