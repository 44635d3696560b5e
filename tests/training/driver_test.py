"""Tests for toprovar_jax.training.driver (the parts that run no training).

The probe / plan / resume sequence itself is dry-run end to end on CPU by
scripts/train_emoji_gpu.sh (toprovar_jax/assets/emoji/README.md).
"""

import json
import pathlib
import tarfile
import tempfile

from absl.testing import absltest

from toprovar_jax.training import driver
from toprovar_jax.training import loop
from tests.training import budget_test


class FlagsTest(absltest.TestCase):

  def test_xla_runs_with_remat_others_without(self):
    self.assertEqual(driver.impl_flags("xla"),
                     ["--config.model.attn_impl=xla",
                      "--config.model.remat=true"])
    self.assertEqual(driver.impl_flags("cudnn"),
                     ["--config.model.attn_impl=cudnn",
                      "--config.model.remat=false"])

  def test_overrides_by_stage(self):
    overrides = ("tokenizer:--config.batch_size=4",
                 "transformer:--config.batch_size=1",
                 "transformer:--config.data.workers=2")
    self.assertEqual(driver.stage_overrides(overrides, "tokenizer"),
                     ["--config.batch_size=4"])
    self.assertEqual(driver.stage_overrides(overrides, "transformer"),
                     ["--config.batch_size=1", "--config.data.workers=2"])
    with self.assertRaisesRegex(ValueError, "'tf:--x=1'"):
      driver.stage_overrides(("tf:--x=1",), "transformer")
    with self.assertRaisesRegex(ValueError, "'--x=1'"):
      driver.stage_overrides(("--x=1",), "transformer")


class _ScriptedDriver(driver.Driver):
  """train() records its calls and writes the scripted run's results.json
  entry (steps added, steps/s), or fails, instead of running train.py."""

  def __init__(self, script, **kw):
    super().__init__(**kw)
    object.__setattr__(self, "script", list(script))
    object.__setattr__(self, "calls", [])

  def train(self, stage, budget_s, train_steps, extra, check=True):
    self.calls.append((stage, round(budget_s), train_steps, tuple(extra)))
    outcome = self.script.pop(0)
    if outcome is None:  # the run failed
      if check:
        raise RuntimeError("train.py failed")
      return False
    steps, rate = outcome
    workdir = self.workdir(stage)
    workdir.mkdir(parents=True, exist_ok=True)
    start = driver.budget.last_run(workdir)[0] if (
        workdir / "results.json").exists() else 0
    loop.append_results(workdir, budget_test.fake_result(start, start + steps,
                                                         rate))
    return True


class StageTest(absltest.TestCase):

  def _driver(self, script, **kw):
    return _ScriptedDriver(script, root=pathlib.Path(tempfile.mkdtemp()),
                           dataset="d.npz", captions="c.npz", restart_s=25.0,
                           probe_s=110.0, **kw)

  def test_cudnn_fails_then_xla_probes_and_plans_over_both_commands(self):
    d = self._driver([None, (100, 2.0), (500, 2.0)])
    got = d.stage("transformer", 300.0, later_s=430.0)
    (s1, b1, n1, e1), (s2, _, n2, e2), (s3, b3, n3, e3) = d.calls
    self.assertEqual((s1, b1, n1), ("transformer", 110, 10**6))
    self.assertIn("--config.model.attn_impl=cudnn", e1)
    self.assertIn("--config.model.remat=true", e2)
    self.assertEqual(e3, e2)  # the run goes on with the implementation
    # 100 probe steps; (300 - 0 - 25) + (430 - 25) s at 2 steps/s more.
    self.assertBetween(n3, 100 + 2 * 679, 100 + 2 * 680)
    self.assertEqual((got["attn_impl"], got["probe_steps"], got["end_step"]),
                     ("xla", 100, 600))

  def test_a_probe_without_a_rate_runs_again(self):
    d = self._driver([(1, 0.0), (40, 3.0), (300, 3.0)])
    got = d.stage("tokenizer", 300.0)
    self.assertEqual([c[2] for c in d.calls],
                     [10**6, 10**6, got["planned_steps"]])
    self.assertEqual([c[1] for c in d.calls][:2], [90, 90])  # its probe_s
    self.assertEqual((got["probe_steps"], got["probe_rate"]), (41, 3.0))
    self.assertBetween(got["planned_steps"], 41 + 3 * 274, 41 + 3 * 275)

  def test_the_last_implementation_must_work(self):
    d = self._driver([None, None])
    with self.assertRaisesRegex(RuntimeError, "train.py failed"):
      d.stage("transformer", 300.0)


class DriverTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = pathlib.Path(tempfile.mkdtemp())

  def test_resume_without_a_run_says_so(self):
    d = driver.Driver(root=self.root, dataset="d.npz", captions="c.npz")
    with self.assertRaisesRegex(FileNotFoundError,
                                "tf/config.json: no training run"):
      d.resume(10.0)

  def test_collect_exports_and_logs(self):
    for sub, name in (("tok", "tokenizer"), ("tf", "transformer")):
      (self.root / sub / "export" / name).mkdir(parents=True)  # orbax copy
      (self.root / sub / "export" / f"{name}_000.npz").write_bytes(b"npz")
      (self.root / sub / "export" / f"{name}.manifest.json").write_text("{}")
      (self.root / sub / "results.json").write_text("{}")
    (self.root / "tok" / "reconstructions.png").write_bytes(b"png")
    out = self.root / "out"
    driver.collect(self.root, out, [{"stage": "tokenizer"}])
    self.assertEqual(sorted(p.name for p in out.iterdir()), [
        "logs.tar.gz", "tokenizer.manifest.json", "tokenizer_000.npz",
        "transformer.manifest.json", "transformer_000.npz"])
    with tarfile.open(out / "logs.tar.gz") as tar:
      self.assertEqual(sorted(tar.getnames()), [
          "summary.json", "tf/results.json", "tok/reconstructions.png",
          "tok/results.json"])
      summary = json.load(tar.extractfile("summary.json"))
    self.assertEqual(summary, [{"stage": "tokenizer"}])


if __name__ == "__main__":
  absltest.main()
