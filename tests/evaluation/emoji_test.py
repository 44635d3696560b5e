"""The pure parts of the emoji evaluation: caption choice, text fitting,
the shuffled baseline and the text-neighbour consistency.

The whole run (models, generation, LPIPS, files) is tested end to end in
tests/evaluate_emoji_test.py.
"""

from absl.testing import absltest
import numpy as np

from toprovar_jax.metrics import emoji_eval

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


class ScoringTest(absltest.TestCase):
  # Two captions (own emoji 0 and 1) over 6 emoji; caption 0's text
  # neighbours are emoji 2, 3 and caption 1's are 4, 5. Each sample sits
  # next to its own caption's neighbours.
  _D = np.array([[0.0, 0.5, 0.1, 0.1, 0.9, 0.9],
                 [0.5, 0.0, 0.9, 0.9, 0.1, 0.1]])
  _OWN = np.array([0, 1])
  _NB = np.array([[2, 3], [4, 5]])

  def test_consistency_known_values(self):
    got = emoji_eval.consistency(self._D, self._D, neighbours=self._NB,
                                 own=self._OWN, samples_per_caption=1)
    self.assertEqual(got["neighbour_auc"], 1.0)
    self.assertEqual(got["true_emoji_neighbour_auc"], 1.0)
    # The other caption's neighbours are the farthest emoji.
    self.assertEqual(got["random_neighbour_auc"], 0.0)
    self.assertEqual(got["neighbour_win_rate"], 1.0)
    # Emoji 2 ties with 3 and its own emoji (distance 0) is closer: rank 3.
    self.assertEqual(got["nearest_caption_median_rank"], 3.0)

  def test_consistency_repeats_per_sample_and_single_caption(self):
    d = np.repeat(self._D, 3, axis=0)  # 3 samples per caption
    got = emoji_eval.consistency(d, self._D, neighbours=self._NB,
                                 own=self._OWN, samples_per_caption=3)
    self.assertEqual(got["neighbour_auc"], 1.0)
    one = emoji_eval.consistency(self._D[:1], self._D[:1],
                                 neighbours=self._NB[:1], own=self._OWN[:1],
                                 samples_per_caption=1)
    self.assertIsNone(one["random_neighbour_auc"])
    self.assertIsNone(one["neighbour_win_rate"])

  def test_shuffled_baseline(self):
    got = emoji_eval._shuffled_baseline(self._D, self._OWN, 1)
    # Sample 0 scored against emoji 1 (0.5): beaten by 0, 2, 3 -> rank 4.
    self.assertEqual(got, dict(top1=0.0, top5=1.0, median_rank=4.0))
    self.assertIsNone(emoji_eval._shuffled_baseline(self._D[:1],
                                                    self._OWN[:1], 1))

  def test_derangement_fixes_nothing(self):
    for c in range(2, 9):
      perm = emoji_eval._derangement(c)
      self.assertCountEqual(perm, range(c))
      self.assertTrue(np.all(perm != np.arange(c)))


if __name__ == "__main__":
  absltest.main()
