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
      if "max_abs_err" in check:  # Argmax checks count mismatches instead.
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
      # A model reference (var/ keys) without its json.
      np.savez(os.path.join(d, "lonely.npz"),
               **{"var/pos_start": np.zeros(3)})
      rc, out, _ = _cli(os.path.join(d, "lonely.npz"))
      self.assertEqual(rc, 2)
      self.assertIn("lonely.json", out["error"])
      # Unrelated keys are an unsupported kind, json or not.
      np.savez(os.path.join(d, "other.npz"), x=np.zeros(3),
               input_ids=np.zeros((1, 2), np.int32))
      shutil.copy(testing.reference_dir() / "var_tiny.json",
                  os.path.join(d, "other.json"))
      rc, out, _ = _cli(os.path.join(d, "other.npz"))
      self.assertEqual(rc, 2)
      self.assertIn("unsupported reference kind", out["error"])

  @parameterized.named_parameters(
      ("minilm", "minilm_reference",
       {"input_ids", "attention_mask", "input_ids_pad256",
        "attention_mask_pad256", "trunc_input_ids", "last_hidden_state",
        "mean_pooled", "sentence_embedding", "trunc_sentence_embedding"}),
      ("t5", "t5_tiny_reference",
       {"param_count", "relative_position_bucket", "embeddings",
        "position_bias", "block_outputs", "last_hidden_state",
        "long_last_hidden_state"}))
  def test_text_reference_passes(self, name, want):
    # These files are self-contained: no NAME.json is needed beside them.
    self.assertFalse((testing.reference_dir() / f"{name}.json").exists())
    rc, out, err = _cli(testing.reference_dir() / f"{name}.npz")
    self.assertEqual(rc, 0, msg=err[-3000:])
    self.assertEqual(out["reference"], name)
    self.assertTrue(out["pass"])
    self.assertContainsSubset(want, set(out["checks"]))
    for check in out["checks"].values():
      self.assertTrue(check["pass"])
      if "max_abs_err" in check:  # Argmax checks count mismatches instead.
        self.assertLessEqual(check["max_abs_err"], check["tol"])

  def test_t5_mismatch_exits_1(self):
    # 3e-4 on one output value: above the 1e-4 tolerance and below the
    # erf-vs-tanh GELU error (6.4e-4) that the tolerance exists to catch.
    ref = testing.load_reference("t5_tiny_reference")
    ref["long/last_hidden_state"] = ref["long/last_hidden_state"].copy()
    ref["long/last_hidden_state"][0, 100, 7] += 3e-4
    with tempfile.TemporaryDirectory() as d:
      np.savez(os.path.join(d, "t5_bad.npz"), **ref)
      rc, out, _ = _cli(os.path.join(d, "t5_bad.npz"))
    self.assertEqual(rc, 1)
    self.assertFalse(out["pass"])
    self.assertFalse(out["checks"]["long_last_hidden_state"]["pass"])
    self.assertTrue(out["checks"]["last_hidden_state"]["pass"])


if __name__ == "__main__":
  absltest.main()
