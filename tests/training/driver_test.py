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
