"""`parity.var`: configs from the json, and malformed VAR references refused
with the file and field or array named, before any model runs.

The passing golden run and the exit codes are tests/parity_test.py's.
"""

import json

from absl.testing import absltest
import numpy as np

from tests.parity import reference_test as fixtures
from toprovar_jax import parity
from toprovar_jax import testing
from toprovar_jax.parity import var


def _meta():
  return json.loads((testing.reference_dir() / "var_tiny.json").read_text())


class ConfigsTest(absltest.TestCase):

  def test_var_tiny(self):
    # README §2: depth 2, C 128, 2 heads, MLP 512, L 680, 1001 class rows.
    cfg, vcfg = var.var_configs(_meta())
    self.assertEqual((cfg.depth, cfg.width, cfg.num_heads, cfg.mlp_hidden,
                      cfg.seq_len, cfg.num_classes, cfg.vocab_size),
                     (2, 128, 2, 512, 680, 1000, 256))
    self.assertEqual(cfg.scale_offsets[:4], (0, 1, 5, 14))
    self.assertEqual((vcfg.ch, vcfg.ch_mult, vcfg.z_channels),
                     (32, (1, 1, 2, 2, 4), 32))
    self.assertEqual(list(vcfg.phi_index),
                     _meta()["derived"]["phi_index_per_scale"])

  def test_unusable_fields_are_named(self):
    meta = _meta()
    meta["hyperparameters"]["depth"] = "two"
    with self.assertRaisesRegex(parity.ReferenceError,
                                "hyperparameters.depth = 'two'"):
      var.var_configs(meta)
    meta = _meta()
    meta["derived"]["num_heads"] = 3  # does not divide C = 128
    with self.assertRaisesRegex(parity.ReferenceError,
                                "no valid VAR model.*num_heads=3"):
      var.var_configs(meta)


class MalformedTest(fixtures.VariantTestCase):

  def _run(self, **variant):
    return self.refused(parity.run,
                        fixtures.write_variant(self.dir, "var_tiny", **variant))

  def test_wrong_depth_names_the_json_field(self):
    def deeper(meta):
      meta["hyperparameters"]["depth"] = 3
    e = self._run(edit_json=deeper)
    self.assertEqual((e.file, e.field), ("bad.json", "hyperparameters.depth"))
    self.assertIn("hyperparameters.depth is 3, but bad.npz holds 2 "
                  "transformer blocks", str(e))

  def test_another_hyperparameter_names_the_weights_it_misfits(self):
    def more_codes(meta):
      meta["hyperparameters"]["V"] = 512
    e = self._run(edit_json=more_codes)
    self.assertEqual(e.file, "bad.npz")
    self.assertEqual(e.arrays, ["var/head.bias", "var/head.weight"])
    self.assertIn("the var/ weights do not fit the model bad.json describes: "
                  "mis-shaped var/head.bias (holds (256,), expected (512,))",
                  str(e))

  def test_a_missing_weight_is_named(self):
    e = self._run(drop=("var/head_nm.ada_lin.1.bias",))
    self.assertEqual((e.file, e.arrays),
                     ("bad.npz", ["var/head_nm.ada_lin.1.bias"]))
    self.assertIn("missing var/head_nm.ada_lin.1.bias", str(e))

  def test_a_weight_of_the_wrong_shape_is_named_in_its_file(self):
    with np.load(testing.reference_dir() / "var_tiny_vae.npz") as z:
      w = z["vae/quant_conv.weight"]
    e = self._run(arrays={"vae/quant_conv.weight": w[:, :, :2]})
    self.assertEqual((e.file, e.arrays),
                     ("bad_vae.npz", ["vae/quant_conv.weight"]))
    self.assertIn("mis-shaped vae/quant_conv.weight (holds (32, 32, 2, 3), "
                  "expected (32, 32, 3, 3))", str(e))

  def test_missing_json_fields_are_named(self):
    for section, key in (("sampling", "cfg"), ("derived", "n_params_var"),
                         ("hyperparameters", "Cvae")):
      def drop(meta, section=section, key=key):
        del meta[section][key]
      e = self._run(edit_json=drop)
      self.assertEqual((e.file, e.field), ("bad.json", f"{section}.{key}"))
      self.assertEqual(str(e), f"bad.json: missing field {section}.{key}")

  def test_unusable_inputs_are_named(self):
    ref = testing.load_reference("var_tiny")
    labels = ref["tf/labels"].copy()
    labels[0] = 1001  # the table has 1000 classes + the null row
    for arrays, file, why in (
        ({"tf/x_BLCv_wo_first_l": ref["tf/x_BLCv_wo_first_l"][:, 1:]},
         "bad.npz", r"has shape \(2, 678, 32\), expected \(B=2, 679, 32\)"),
        ({"tf/labels": labels}, "bad.npz", r"outside \[0, 1001\)"),
        ({"vaetest/img_in": ref["vaetest/img_in"][..., :128]},
         "bad_vae.npz", r"expected \(N=1, 3, 256, 256\)")):
      with self.subTest(next(iter(arrays))):
        e = self._run(arrays=arrays)
        self.assertEqual((e.file, e.arrays), (file, list(arrays)))
        self.assertRegex(str(e), why)


if __name__ == "__main__":
  absltest.main()
