"""`parity.infinity`: configs from the json (plain and 8B-style), and
malformed Infinity references refused with what is wrong named.

The passing golden runs are tests/parity_test.py's.
"""

import json

from absl.testing import absltest
import numpy as np

from tests.parity import reference_test as fixtures
from toprovar_jax import parity
from toprovar_jax import testing
from toprovar_jax.parity import infinity


def _meta(source="infinity_tiny"):
  return json.loads((fixtures.source_dir(source) / f"{source}.json")
                    .read_text())


class ConfigsTest(absltest.TestCase):

  def test_infinity_tiny_and_8b_tiny(self):
    # README §2 / tests/golden/README.md: 7 square scales with 16 bits; the
    # 8B-style model patchifies 14-bit codes into 56-bit tokens.
    cfg, vcfg = infinity.infinity_configs(_meta())
    self.assertEqual((cfg.depth, cfg.width, cfg.seq_len, cfg.latent_dim,
                      cfg.text_dim, cfg.patchify), (2, 256, 521, 16, 256,
                                                    False))
    self.assertEqual(cfg.schedule[-1], (16, 16))
    self.assertEqual((vcfg.stride, vcfg.codebook_dim), (16, 16))
    cfg, vcfg = infinity.infinity_configs(_meta("infinity_8b_tiny"))
    self.assertEqual((cfg.seq_len, cfg.latent_dim, cfg.patchify),
                     (89, 56, True))
    self.assertEqual(cfg.schedule[-1], (9, 6))
    self.assertEqual(vcfg.stride, 8)

  def test_unusable_fields_are_named(self):
    meta = _meta()
    meta["derived"]["scale_schedule"] = [[1, 1]]
    with self.assertRaisesRegex(parity.ReferenceError,
                                "derived.scale_schedule .* not usable"):
      infinity.infinity_configs(meta)


class PaddedTextTest(absltest.TestCase):

  def test_packed_prompts_are_padded_on_the_right(self):
    cfg, _ = infinity.infinity_configs(_meta())
    kv = np.arange(3 * cfg.text_dim, dtype=np.float32).reshape(3, -1)
    text, mask = infinity.padded_text({
        "text/kv_compact": kv, "text/lens": np.array([1, 2]),
        "text/cu_seqlens_k": np.array([0, 1, 3])}, cfg)
    np.testing.assert_array_equal(mask, [[True, False], [True, True]])
    np.testing.assert_array_equal(text[0, 0], kv[0])
    np.testing.assert_array_equal(text[0, 1], 0)
    np.testing.assert_array_equal(text[1], kv[1:])


class MalformedTest(fixtures.VariantTestCase):

  def _run(self, **variant):
    return self.refused(parity.run, fixtures.write_variant(
        self.dir, "infinity_tiny", **variant))

  def test_wrong_depth_names_the_json_field(self):
    def deeper(meta):
      meta["hyperparameters"]["model_kwargs"]["depth"] = 4
    e = self._run(edit_json=deeper)
    self.assertEqual((e.file, e.field),
                     ("bad.json", "hyperparameters.model_kwargs.depth"))
    # Blocks are stored as block_chunks.{c}.module.{j}.
    self.assertIn("bad.npz holds 2 transformer blocks", str(e))

  def test_a_weight_of_the_wrong_shape_is_named(self):
    ref = testing.load_reference("infinity_tiny")
    key = "infinity/head.weight"
    e = self._run(arrays={key: ref[key].T})
    self.assertEqual((e.file, e.arrays), ("bad.npz", [key]))

  def test_per_scale_guidance_is_refused_not_averaged(self):
    def ramp(meta):
      meta["sampling"]["cfg_list"][-1] = 4.0
    e = self._run(edit_json=ramp)
    self.assertEqual((e.file, e.field), ("bad.json", "sampling.cfg_list"))
    self.assertIn("varies by scale", str(e))

  def test_inconsistent_text_is_named(self):
    ref = testing.load_reference("infinity_tiny")
    e = self._run(arrays={"text/cu_seqlens_k": ref["text/cu_seqlens_k"] + 1})
    self.assertEqual(e.arrays, ["text/cu_seqlens_k", "text/lens"])
    self.assertIn("not the running sums", str(e))
    e = self._run(arrays={"text/kv_compact": ref["text/kv_compact"][:-1]})
    self.assertIn(r"text/kv_compact has shape (17, 256), expected (18, 256)",
                  str(e))

  def test_bits_that_are_not_bits_are_named(self):
    ref = testing.load_reference("infinity_tiny")
    bits = ref["sample/bits"].copy()
    bits[1, 7, 3] = 2
    e = self._run(arrays={"sample/bits": bits})
    self.assertEqual((e.file, e.arrays), ("bad.npz", ["sample/bits"]))
    self.assertIn("values other than 0 and 1", str(e))


if __name__ == "__main__":
  absltest.main()
