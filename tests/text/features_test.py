"""Text features of prompts: placeholder features (no T5 yet) and the
MiniLM encoder's name for the emoji model."""

from absl.testing import absltest
import numpy as np

from toprovar_jax.models import config as config_lib
from toprovar_jax.text import features


class PlaceholderTest(absltest.TestCase):

  def test_placeholder_features_are_a_function_of_the_prompt(self):
    a = features.placeholder_text_features("a cat", text_dim=64, text_len=8)
    b = features.placeholder_text_features("a cat", text_dim=64, text_len=8)
    c = features.placeholder_text_features("a dog", text_dim=64, text_len=8)
    np.testing.assert_array_equal(a, b)
    self.assertEqual(a.shape, (3, 64))  # "a", "cat", end of sequence
    self.assertFalse(np.allclose(a, c))
    long = features.placeholder_text_features(" ".join(["w"] * 300),
                                              text_dim=64, text_len=512)
    self.assertAlmostEqual(float(long.std()), 0.3, delta=0.01)

  def test_token_count_and_cap(self):
    self.assertEqual(features.placeholder_token_count("a red, apple"), 5)
    self.assertEqual(features.placeholder_text_features(
        "one two three four", text_dim=8, text_len=3).shape, (3, 8))

  def test_encoder_names(self):
    self.assertEqual(features.text_encoder_name(
        config_lib.get_variant("emoji")), features.MINILM_TEXT)
    self.assertEqual(features.text_encoder_name(
        config_lib.get_variant("infinity_2b")), features.PLACEHOLDER_TEXT)

  def test_minilm_needs_two_tokens(self):
    with self.assertRaisesRegex(ValueError, "config.sampling.text_len: "
                                "MiniLM needs >= 2 tokens"):
      features.minilm_text_features(("x",), text_len=1)


if __name__ == "__main__":
  absltest.main()
