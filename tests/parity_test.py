"""experiments/check_parity: the user-facing parity CLI and its exit codes."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from toprovar_jax import parity
from toprovar_jax import testing

_REPO = pathlib.Path(__file__).resolve().parent.parent


def _cli(path):
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.check_parity", f"--reference={path}"],
      cwd=_REPO, capture_output=True, text=True, check=False,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
  return proc.returncode, json.loads(last), proc.stderr


class CheckParityCliTest(parameterized.TestCase):

  @parameterized.named_parameters(("var", "var_tiny"),
                                  ("infinity", "infinity_tiny"))
  def test_shared_reference_passes(self, name):
    rc, out, err = _cli(testing.reference_dir() / f"{name}.npz")
    self.assertEqual(rc, 0, msg=err[-3000:])
    self.assertEqual(out["reference"], name)
    self.assertTrue(out["pass"])
    # Every kind of comparison the pair supports ran.
    want = {"param_count", "tf_logits", "tf_inputs", "vae_f" if name ==
            "var_tiny" else "vae_h", "vae_img_rec", "sample_logits_guided",
            "sample_argmax", "sample_img"}
    self.assertContainsSubset(want, set(out["checks"]))
    for check in out["checks"].values():
      self.assertTrue(check["pass"])
      if "tol" in check:
        self.assertLessEqual(check["max_abs_err"], check["tol"])

  def test_mismatch_exits_1(self):
    # A reduced reference (weights + teacher forcing only) with the stored
    # logits perturbed beyond the tolerance: the check must fail.
    ref = testing.load_reference("var_tiny")
    keep = {k: v for k, v in ref.items()
            if k.startswith("var/") or k in ("tf/labels", "tf/logits",
                                              "tf/x_BLCv_wo_first_l")}
    keep["tf/logits"] = keep["tf/logits"].copy()
    keep["tf/logits"][0, 5, 3] += 1e-3
    with tempfile.TemporaryDirectory() as d:
      np.savez(os.path.join(d, "bad.npz"), **keep)
      shutil.copy(testing.reference_dir() / "var_tiny.json",
                  os.path.join(d, "bad.json"))
      rc, out, _ = _cli(os.path.join(d, "bad.npz"))
    self.assertEqual(rc, 1)
    self.assertFalse(out["pass"])
    self.assertFalse(out["checks"]["tf_logits"]["pass"])
    self.assertGreaterEqual(out["checks"]["tf_logits"]["max_abs_err"], 9e-4)
    self.assertTrue(out["checks"]["param_count"]["pass"])

  def test_unreadable_and_unsupported_exit_2(self):
    with tempfile.TemporaryDirectory() as d:
      junk = os.path.join(d, "junk.npz")
      with open(junk, "wb") as f:
        f.write(b"not a zip")
      shutil.copy(testing.reference_dir() / "var_tiny.json",
                  os.path.join(d, "junk.json"))
      rc, out, _ = _cli(junk)
      self.assertEqual(rc, 2)
      self.assertIn("cannot read", out["error"])
      # A readable npz without its json.
      np.savez(os.path.join(d, "lonely.npz"), x=np.zeros(3))
      rc, out, _ = _cli(os.path.join(d, "lonely.npz"))
      self.assertEqual(rc, 2)
      self.assertIn("lonely.json", out["error"])
    # The MiniLM and T5 golden files are not model references (yet).
    for name, word in (("minilm_reference", "MiniLM"),
                       ("t5_tiny_reference", "T5")):
      rc, out, _ = _cli(testing.reference_dir() / f"{name}.npz")
      self.assertEqual(rc, 2)
      self.assertIn(word, out["error"])


if __name__ == "__main__":
  absltest.main()
