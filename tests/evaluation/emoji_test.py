"""The pure parts of the emoji evaluation application: caption choice and
text fitting (its scores: tests/metrics/emoji_scores_test.py).

The whole run (models, generation, LPIPS, files) is tested end to end in
tests/experiments/evaluate_emoji_test.py.
"""

from absl.testing import absltest
import numpy as np

from toprovar_jax.evaluation import emoji as emoji_eval

_CAPTIONS = ["sun", "dog face", "moon", "red apple", "cat", "grinning face",
             "star", "tree", "boat", "car"]


class ChooseTrainCaptionsTest(absltest.TestCase):

  def _choose(self, captions, train, num, must=emoji_eval.COMMON_CAPTIONS):
    idx = emoji_eval.choose_train_captions(captions, np.asarray(train), num,
                                           must)
    return [captions[i] for i in idx]

  def test_common_first_then_fixed_order(self):
    train = [c != "moon" for c in _CAPTIONS]
    got = self._choose(_CAPTIONS, train, 6)
    self.assertEqual(got[:3], ["red apple", "grinning face", "dog face"])
    self.assertLen(got, 6)
    self.assertNotIn("moon", got)
    self.assertLen(set(got), 6)
    # Everything, when asking for more than there is.
    self.assertCountEqual(self._choose(_CAPTIONS, train, 100),
                          [c for c in _CAPTIONS if c != "moon"])

  def test_independent_of_dataset_order(self):
    perm = np.random.default_rng(0).permutation(len(_CAPTIONS))
    shuffled = [_CAPTIONS[i] for i in perm]
    train = [c != "moon" for c in _CAPTIONS]
    self.assertEqual(self._choose(_CAPTIONS, train, 7),
                     self._choose(shuffled, [train[i] for i in perm], 7))

  def test_missing_or_heldout_common_captions_are_skipped(self):
    train = [c != "red apple" for c in _CAPTIONS]
    got = self._choose(_CAPTIONS, train, 3, must=("red apple", "unicorn",
                                                  "dog face"))
    self.assertEqual(got[0], "dog face")
    self.assertNotIn("red apple", got)


class FitTextTest(absltest.TestCase):

  def test_cut_and_pad(self):
    text = np.ones((2, 6, 3), np.float32)
    mask = np.zeros((2, 6), bool)
    mask[:, :2] = True
    t, m = emoji_eval._fit_text(text, mask, 4)
    self.assertEqual((t.shape, m.shape), ((2, 4, 3), (2, 4)))
    t, m = emoji_eval._fit_text(text, mask, 8)
    self.assertEqual((t.shape, m.shape), ((2, 8, 3), (2, 8)))
    np.testing.assert_array_equal(t[:, 6:], 0)
    np.testing.assert_array_equal(m[:, 6:], False)
    np.testing.assert_array_equal(m[:, :6], mask)


if __name__ == "__main__":
  absltest.main()
