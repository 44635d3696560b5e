"""The data side of training: model pair, image size, split, batches."""

import os
import tempfile

from absl.testing import absltest
import numpy as np

from toprovar_jax.data import emoji
from toprovar_jax.models import config as config_lib
from toprovar_jax.training import data as training_data


class ModelsTest(absltest.TestCase):

  def test_emoji_variants_and_image_sizes(self):
    model, tok = training_data.get_models("emoji")
    self.assertEqual((model, tok), (config_lib.get_variant("emoji"),
                                    config_lib.get_tokenizer("emoji")))
    self.assertEqual(training_data.image_size(model, tok), 128)
    tiny, tiny_tok = training_data.get_models("_emoji_tiny")
    self.assertEqual(tiny.name, "_emoji_tiny")
    self.assertEqual(training_data.image_size(tiny, tiny_tok), 32)
    self.assertEqual(training_data.vae_schedule(tiny),
                     ((1, 1), (2, 2), (4, 4), (8, 8)))

  def test_only_infinity_bsq_models_train(self):
    with self.assertRaisesRegex(ValueError, "model.variant: 'var_tiny' is "
                                "not an Infinity-style model"):
      training_data.get_models("var_tiny")


class SplitTest(absltest.TestCase):

  def _dataset(self, heldout):
    n = len(heldout)
    return emoji.EmojiDataset(
        images=np.zeros((n, 4, 4, 4), np.uint8),
        captions=np.array([f"c{i}" for i in range(n)]),
        codepoints=np.array([f"{i}" for i in range(n)]),
        heldout=np.array(heldout), metadata={})

  def test_heldout_is_the_eval_set(self):
    train, held = training_data.split(self._dataset([False, True, False]))
    np.testing.assert_array_equal(train, [True, False, True])
    np.testing.assert_array_equal(held, [False, True, False])

  def test_all_or_nothing_held_out_uses_everything(self):
    for flags in ([False, False], [True, True]):
      train, held = training_data.split(self._dataset(flags))
      np.testing.assert_array_equal(train, [True, True])
      np.testing.assert_array_equal(held, [True, True])


class CaptionFeaturesTest(absltest.TestCase):

  def test_rows_by_caption_and_missing_ones_named(self):
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, "captions.npz")
      feats = np.arange(3 * 2 * 4, dtype=np.float16).reshape(3, 2, 4)
      np.savez(path, captions=np.array(["a", "b", "c"]),
               token_features=feats, mask=np.array([[1, 0], [1, 1], [0, 0]]))
      text, mask = training_data.caption_features(path, ["c", "a"])
      self.assertEqual(text.dtype, np.float32)
      np.testing.assert_array_equal(text, feats[[2, 0]].astype(np.float32))
      np.testing.assert_array_equal(mask, [[False, False], [True, False]])
      with self.assertRaisesRegex(ValueError, r"no features for 1 captions, "
                                  r"e\.g\. \['zebra'\]"):
        training_data.caption_features(path, ["a", "zebra"])


class BatchTest(absltest.TestCase):

  def test_batches_depend_only_on_the_step(self):
    rgba = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 4),
                                             dtype=np.uint8)
    text = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((1, 3, 2))
    mask = np.ones((10, 3), bool)
    kw = dict(batch_size=4, image_size=16, seed=3, text=text, text_mask=mask)
    one = training_data.make_batch_fn(rgba, workers=1, **kw)
    three = training_data.make_batch_fn(rgba, workers=3, **kw)
    for step in (0, 7, 2):
      a, b = one(step), three(step)
      self.assertEqual(a["images"].dtype, np.uint8)
      self.assertEqual(a["images"].shape, (4, 16, 16, 3))
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    self.assertFalse(np.array_equal(one(0)["images"], one(1)["images"]))
    # Five steps of 4 = two epochs of 10: each emoji exactly twice.
    seen = np.concatenate([one(s)["text"][:, 0, 0] for s in range(5)])
    np.testing.assert_array_equal(np.bincount(seen.astype(int)), [2] * 10)


if __name__ == "__main__":
  absltest.main()
