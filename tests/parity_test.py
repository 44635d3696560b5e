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


_GOLDEN = _REPO / "tests" / "golden"


class Infinity8BLayoutTest(absltest.TestCase):
  """tests/golden/infinity_8b_tiny: the official code on a tiny 8B-style
  model (2x2 patchify, 56-bit tokens, 14-bit stride-8 BSQ VAE, h/w 1.5
  template), made by scripts/oracle/infinity_8b_tiny.py."""

  def test_check_parity_passes(self):
    rc, out, err = _cli(_GOLDEN / "infinity_8b_tiny.npz")
    self.assertEqual(rc, 0, msg=err[-3000:])
    self.assertTrue(out["pass"])
    self.assertEqual(set(out["checks"]), {
        "param_count", "rope_positions", "vae_param_count", "vae_h",
        "vae_bits", "vae_z", "vae_img_rec", "sample_logits_guided",
        "sample_argmax", "sample_summed_codes", "sample_img"})
    self.assertEqual(out["checks"]["sample_argmax"]["compared"], 2 * 89 * 56)

  def test_another_patchify_bit_order_fails(self):
    # Token bit 4c + 2i + j is latent bit c at (2h + i, 2w + j): the stored
    # bits sum to the official codes only in that order, not as (i, j, c).
    from toprovar_jax.sampling import latents  # pylint: disable=g-import-not-at-top
    _, arrays, meta = parity.load(_GOLDEN / "infinity_8b_tiny.npz")
    cfg, _ = parity.infinity_configs(meta)
    bits = arrays["sample/bits"]
    b, l, _ = bits.shape
    swapped = bits.reshape(b, l, 14, 4).transpose(0, 1, 3, 2).reshape(b, l, 56)
    acc = latents.InfinityLatents(cfg)
    off = cfg.scale_offsets
    ref = arrays["sample/summed_codes"].transpose(0, 2, 3, 1)
    errs = []
    for order in (bits, swapped):
      s = acc.init(b)
      for si in range(cfg.num_scales):
        s = acc.add(None, s, order[:, off[si]:off[si + 1]], si)
      errs.append(float(np.abs(np.asarray(s) - ref).max()))
    self.assertLess(errs[0], 1e-5)
    self.assertGreater(errs[1], 0.1)

  def test_rope_of_every_official_template(self):
    from toprovar_jax.models import config as config_lib  # pylint: disable=g-import-not-at-top
    from toprovar_jax.models import layers  # pylint: disable=g-import-not-at-top
    with np.load(_GOLDEN / "infinity_8b_tiny.npz") as z:
      official = {k.split("/")[1]: z[k] for k in z.files
                  if k.startswith("rope_1m/")}
    self.assertLen(official, 15)
    base = config_lib.get_variant("infinity_2b")
    for ratio in config_lib.infinity_templates():
      cfg = config_lib.at_resolution(base, ratio, "1M")
      np.testing.assert_array_equal(layers.rope_positions(cfg),
                                    official[f"{ratio:g}"], err_msg=ratio)

  def test_golden_files_stay_small(self):
    total = sum(p.stat().st_size for p in _GOLDEN.glob("infinity_8b_tiny*"))
    self.assertLessEqual(total, 2 * 1024 * 1024)


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
