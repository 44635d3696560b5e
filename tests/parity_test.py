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

from tests.parity import reference_test as variants
from toprovar_jax import parity
from toprovar_jax import testing
from toprovar_jax.parity import reference

_REPO = pathlib.Path(__file__).resolve().parent.parent


def _refuse(constant):
  raise ValueError(f"non-standard JSON constant {constant}")


def _cli(path):
  """(exit code, last stdout line as strict JSON, stderr) of the CLI."""
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.check_parity", f"--reference={path}"],
      cwd=_REPO, capture_output=True, text=True, check=False,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
  return proc.returncode, json.loads(last, parse_constant=_refuse), proc.stderr


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
  """The contract: exit 0 all pass, 1 a mismatch, 2 a reference it cannot
  read or use; the last stdout line is one strict-JSON object."""

  @parameterized.named_parameters(("var", "var_tiny"),
                                  ("infinity", "infinity_tiny"),
                                  ("minilm", "minilm_reference"),
                                  ("t5", "t5_tiny_reference"))
  def test_shared_reference_passes(self, name):
    rc, out, err = _cli(testing.reference_dir() / f"{name}.npz")
    self.assertEqual(rc, 0, msg=err[-3000:])
    self.assertEqual(out["reference"], name)
    self.assertTrue(out["pass"])
    # Every check of the kind's layout ran, the optional ones included:
    # these files hold every optional group.
    layout = reference.LAYOUTS[out["kind"]]
    self.assertEqual(set(out["checks"]), set(layout.required.checks).union(
        *(g.checks for g in layout.optional)))
    for check in out["checks"].values():
      self.assertTrue(check["pass"])
      if "max_abs_err" in check:  # Argmax checks count mismatches instead.
        self.assertLessEqual(check["max_abs_err"], check["tol"])
    if name.startswith("minilm") or name.startswith("t5"):
      # Self-contained: no NAME.json is needed beside them.
      self.assertFalse((testing.reference_dir() / f"{name}.json").exists())

  def test_mismatches_exit_1_with_strict_json(self):
    # One run, three kinds of mismatch: a value beyond the tolerance, an
    # array of another shape (never broadcast), non-finite values.
    ref = testing.load_reference("var_tiny")
    logits = ref["tf/logits"].copy()
    logits[0, 5, 3] += 1e-3
    img_rec = ref["vaetest/img_rec"].copy()
    img_rec[0, 1, 2, 3], img_rec[0, 2, 0, 0] = np.nan, np.inf
    with tempfile.TemporaryDirectory() as d:
      rc, out, err = _cli(variants.write_variant(d, "var_tiny", arrays={
          "tf/logits": logits, "vaetest/img_rec": img_rec,
          "sample/f_hat": ref["sample/f_hat"].transpose(0, 2, 3, 1)}))
    self.assertEqual(rc, 1, msg=err[-3000:])
    self.assertFalse(out["pass"])
    checks = out["checks"]
    self.assertEqual({k for k, c in checks.items() if not c["pass"]},
                     {"tf_logits", "vae_img_rec", "sample_f_hat"})
    self.assertGreaterEqual(checks["tf_logits"]["max_abs_err"], 9e-4)
    self.assertEqual(checks["sample_f_hat"]["shape"],
                     [[2, 32, 16, 16], [2, 16, 16, 32]])
    self.assertNotIn("max_abs_err", checks["sample_f_hat"])
    self.assertIsNone(checks["vae_img_rec"]["max_abs_err"])
    self.assertEqual(checks["vae_img_rec"]["non_finite"],
                     {"ours": 0, "reference": 2})

  def test_malformed_references_exit_2_naming_the_problem(self):
    def deeper(meta):
      meta["hyperparameters"]["depth"] = 3
    with tempfile.TemporaryDirectory() as d:
      for variant, named in (
          ({"edit_json": deeper},
           {"file": "bad.json", "field": "hyperparameters.depth"}),
          ({"corrupt": ("_vae.npz",)}, {"file": "bad_vae.npz"}),
          ({"leave_out": ("_vae.npz",)}, {"file": "bad_vae.npz"}),
          ({"drop": ("sample/labels",)}, {"arrays": ["sample/labels"]})):
        rc, out, err = _cli(variants.write_variant(d, "var_tiny", **variant))
        self.assertEqual(rc, 2, msg=err[-3000:])
        self.assertFalse(out["pass"])
        self.assertEqual({k: out.get(k) for k in named}, named)
        self.assertTrue(out["error"])
        for f in pathlib.Path(d).iterdir():
          f.unlink()

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
      self.assertEqual(out["file"], "junk.npz")
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

  def test_t5_mismatch_exits_1(self):
    # 3e-4 on one output value: above the 1e-4 tolerance and below the
    # erf-vs-tanh GELU error (6.4e-4) that the tolerance exists to catch.
    # NaN at a real position of the main test fails it as strict JSON; at
    # a padded position it is reported, not judged.
    ref = testing.load_reference("t5_tiny_reference")
    long_hidden = ref["long/last_hidden_state"].copy()
    long_hidden[0, 100, 7] += 3e-4
    blocks = ref["diag/block_outputs"].copy()
    blocks[1, 0, 9, 0] = np.nan  # row 0 has 7 real tokens
    hidden = ref["last_hidden_state"].copy()
    hidden[1, 4, 2] = np.nan
    with tempfile.TemporaryDirectory() as d:
      rc, out, err = _cli(variants.write_variant(
          d, "t5_tiny_reference", arrays={
              "long/last_hidden_state": long_hidden, "last_hidden_state":
              hidden, "diag/block_outputs": blocks}))
    self.assertEqual(rc, 1, msg=err[-3000:])
    self.assertFalse(out["pass"])
    checks = out["checks"]
    self.assertEqual({k for k, c in checks.items() if not c["pass"]},
                     {"long_last_hidden_state", "last_hidden_state"})
    self.assertGreater(checks["long_last_hidden_state"]["max_abs_err"], 2e-4)
    self.assertEqual(checks["last_hidden_state"]["non_finite"],
                     {"ours": 0, "reference": 1})
    self.assertIsNone(checks["block_outputs"]["max_abs_err_padded_info"])


if __name__ == "__main__":
  absltest.main()
