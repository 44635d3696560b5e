"""`parity.text`: malformed T5 / MiniLM references refused with the array
named, before the encoders run.

The passing golden runs and exit codes are tests/parity_test.py's.
"""

from absl.testing import absltest

from tests.parity import reference_test as fixtures
from toprovar_jax import parity
from toprovar_jax import testing


class T5Test(fixtures.VariantTestCase):

  def _run(self, **variant):
    return self.refused(parity.run, fixtures.write_variant(
        self.dir, "t5_tiny_reference", **variant))

  def test_bad_weights_are_named(self):
    ref = testing.load_reference("t5_tiny_reference")
    key = "t5/encoder.block.1.layer.1.DenseReluDense.wo.weight"
    e = self._run(arrays={key: ref[key][:, :64]})
    self.assertEqual((e.file, e.arrays), ("bad.npz", [key]))
    self.assertIn(f"mis-shaped {key} (holds (64, 64), expected (64, 128))",
                  str(e))
    e = self._run(drop=("t5/encoder.final_layer_norm.weight",))
    self.assertEqual(e.arrays, ["t5/encoder.final_layer_norm.weight"])

  def test_ids_outside_the_vocabulary_are_named(self):
    ref = testing.load_reference("t5_tiny_reference")
    ids = ref["long/input_ids"].copy()
    ids[0, 3] = 512  # the tiny vocabulary has 512 entries
    e = self._run(arrays={"long/input_ids": ids})
    self.assertEqual(e.arrays, ["long/input_ids"])
    self.assertIn(r"outside [0, 512)", str(e))
    e = self._run(arrays={"attention_mask": ref["attention_mask"][:1]})
    self.assertIn("attention_mask has shape (1, 12), expected (B=2, L=12)",
                  str(e))


class MiniLMTest(fixtures.VariantTestCase):

  def test_a_missing_array_is_named(self):
    e = self.refused(parity.run, fixtures.write_variant(
        self.dir, "minilm_reference", drop=("trunc/text", "sentences")))
    self.assertEqual(e.arrays, ["sentences", "trunc/text"])

  def test_a_misshaped_mask_is_named(self):
    ref = testing.load_reference("minilm_reference")
    short = ref["attention_mask_pad256"][:, :128]
    e = self.refused(parity.run, fixtures.write_variant(
        self.dir, "minilm_reference", arrays={"attention_mask_pad256": short}))
    self.assertEqual(e.arrays, ["attention_mask_pad256"])
    self.assertIn("expected (B=8, 256)", str(e))


if __name__ == "__main__":
  absltest.main()
