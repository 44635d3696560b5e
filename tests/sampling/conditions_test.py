"""Conditions of a run: labels and prompts validated, prompts encoded,
padded, cut with a warning, and cycled to the number of samples."""

from absl.testing import absltest
import numpy as np

from toprovar_jax.models import config as config_lib
from toprovar_jax.sampling import conditions as conditions_lib
from toprovar_jax.text import features


class MakeConditionsTest(absltest.TestCase):

  def test_long_prompt_is_truncated_with_a_warning(self):
    model = config_lib.get_variant("infinity_tiny")
    with self.assertLogs(level="WARNING") as logs:
      cond = conditions_lib.make_conditions(
          model, prompts=("one two three four five six",), text_len=4)
    self.assertIn("truncated", "".join(logs.output))
    self.assertEqual(cond.text_lengths, (4,))
    self.assertEqual(cond.truncated, (True,))
    self.assertTrue(cond.text_mask.all())

  def test_t5_prompts_are_capped_at_512_with_a_warning(self):
    import tempfile  # pylint: disable=g-import-not-at-top
    from tests.text import flan_t5_test  # pylint: disable=g-import-not-at-top
    t5_dir = flan_t5_test.write_folder(tempfile.mkdtemp(), d_model=32)
    model = config_lib.replace(config_lib.get_variant("infinity_tiny"),
                               text_dim=32, text_pool_heads=1)
    long = "a red fox " * 200  # 600 pieces + </s>
    with self.assertLogs(level="WARNING") as logs:
      cond = conditions_lib.make_conditions(
          model, prompts=(long, "a"), text_len=512, t5_dir=str(t5_dir))
    self.assertIn("sampling.prompts[0] has 601 tokens, more than "
                  "sampling.text_len=512; truncated", "".join(logs.output))
    self.assertEqual(cond.text_lengths, (512, 2))
    self.assertEqual(cond.truncated, (True, False))
    self.assertEqual(cond.text_features, f"flan-t5:{t5_dir.name}")
    self.assertEqual(cond.text.shape, (2, 512, 32))
    self.assertTrue(cond.text_mask[0].all())
    self.assertEqual(cond.text_mask[1].sum(), 2)
    self.assertFalse(cond.text[1, 2:].any())

  def test_num_samples_cycles_conditions(self):
    model = config_lib.get_variant("var_tiny")
    cond = conditions_lib.make_conditions(model, labels=(1, 2), num_samples=5)
    np.testing.assert_array_equal(cond.labels, [1, 2, 1, 2, 1])

  def test_prompts_are_padded_with_a_prefix_mask(self):
    model = config_lib.get_variant("infinity_tiny")
    cond = conditions_lib.make_conditions(
        model, prompts=("a red apple", "sun"), num_samples=3, text_len=8)
    self.assertEqual(cond.num_samples, 3)
    self.assertEqual(cond.prompts, ("a red apple", "sun", "a red apple"))
    self.assertEqual(cond.text_features, features.PLACEHOLDER_TEXT)
    self.assertEqual(cond.text_lengths, (4, 2, 4))  # words + end row
    np.testing.assert_array_equal(cond.text_mask.sum(axis=1), [4, 2, 4])
    np.testing.assert_array_equal(cond.text[0], cond.text[2])
    np.testing.assert_array_equal(cond.text[1, 2:], 0.0)

  def test_bad_labels_and_prompts_are_named(self):
    var = config_lib.get_variant("var_tiny")
    with self.assertRaisesRegex(ValueError,
                                r"^config.sampling.labels\[1\]: True is not "
                                r"an integer"):
      conditions_lib.make_conditions(var, labels=(3, True))
    inf = config_lib.get_variant("infinity_tiny")
    with self.assertRaisesRegex(ValueError,
                                r"^config.sampling.prompts\[0\]: 3 is not a "
                                r"string"):
      conditions_lib.make_conditions(inf, prompts=(3,), text_len=8)

  def test_num_samples_of_bare_text(self):
    cond = conditions_lib.Conditions(text=np.zeros((3, 4, 2)),
                                     text_mask=np.ones((3, 4), bool))
    self.assertEqual(cond.num_samples, 3)


if __name__ == "__main__":
  absltest.main()
