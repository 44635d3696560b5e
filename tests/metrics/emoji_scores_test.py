"""The scores of the emoji evaluation: the shuffled baseline and the
text-neighbour consistency, on hand-made distance matrices."""

from absl.testing import absltest
import numpy as np

from toprovar_jax.metrics import emoji_scores


class ScoringTest(absltest.TestCase):
  # Two captions (own emoji 0 and 1) over 6 emoji; caption 0's text
  # neighbours are emoji 2, 3 and caption 1's are 4, 5. Each sample sits
  # next to its own caption's neighbours.
  _D = np.array([[0.0, 0.5, 0.1, 0.1, 0.9, 0.9],
                 [0.5, 0.0, 0.9, 0.9, 0.1, 0.1]])
  _OWN = np.array([0, 1])
  _NB = np.array([[2, 3], [4, 5]])

  def test_consistency_known_values(self):
    got = emoji_scores.consistency(self._D, self._D, neighbours=self._NB,
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
    got = emoji_scores.consistency(d, self._D, neighbours=self._NB,
                                 own=self._OWN, samples_per_caption=3)
    self.assertEqual(got["neighbour_auc"], 1.0)
    one = emoji_scores.consistency(self._D[:1], self._D[:1],
                                 neighbours=self._NB[:1], own=self._OWN[:1],
                                 samples_per_caption=1)
    self.assertIsNone(one["random_neighbour_auc"])
    self.assertIsNone(one["neighbour_win_rate"])

  def test_shuffled_baseline(self):
    got = emoji_scores._shuffled_baseline(self._D, self._OWN, 1)
    # Sample 0 scored against emoji 1 (0.5): beaten by 0, 2, 3 -> rank 4.
    self.assertEqual(got, dict(top1=0.0, top5=1.0, median_rank=4.0))
    self.assertIsNone(emoji_scores._shuffled_baseline(self._D[:1],
                                                    self._OWN[:1], 1))

  def test_derangement_fixes_nothing(self):
    for c in range(2, 9):
      perm = emoji_scores._derangement(c)
      self.assertCountEqual(perm, range(c))
      self.assertTrue(np.all(perm != np.arange(c)))


if __name__ == "__main__":
  absltest.main()
