"""Retrieval ranks, top-k summaries, text neighbours and set AUCs.

Hand-made distance matrices with known answers, plus one end-to-end case
through LPIPS: noisy copies of distinct synthetic "emoji" retrieve their
own original first.
"""

from absl.testing import absltest
import numpy as np

from toprovar_jax.metrics import lpips
from toprovar_jax.metrics import retrieval

# 3 samples x 4 references.
_D = np.array([[0.1, 0.5, 0.7, 0.9],    # true 0: nearest -> rank 1
               [0.4, 0.2, 0.3, 0.1],    # true 2: 0.1 and 0.2 closer -> 3
               [0.5, 0.5, 0.5, 0.5]])   # true 1: all tied -> last (4)
_TRUE = np.array([0, 2, 1])


def _shapes(n, size=32):
  """(n, size, size, 3) uint8: distinct coloured shapes on white."""
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:size, :size] / (size - 1) - 0.5
  out = np.full((n, size, size, 3), 255, np.uint8)
  for i in range(n):
    cy, cx = rng.uniform(-0.2, 0.2, 2)
    r = rng.uniform(0.15, 0.4)
    if i % 3 == 0:
      mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
    elif i % 3 == 1:
      mask = (abs(yy - cy) < r) & (abs(xx - cx) < r / 2)
    else:
      mask = abs(yy - cy) + abs(xx - cx) < r
    out[i][mask] = rng.integers(0, 200, 3)
  return out


class RanksTest(absltest.TestCase):

  def test_known_ranks_ties_count_against(self):
    np.testing.assert_array_equal(retrieval.ranks(_D, _TRUE), [1, 3, 4])

  def test_rejects_bad_index(self):
    with self.assertRaisesRegex(ValueError, "true_index"):
      retrieval.ranks(_D, np.array([0, 1, 4]))
    with self.assertRaisesRegex(ValueError, "shape"):
      retrieval.ranks(_D, np.array([0, 1]))

  def test_auc_of_rank(self):
    np.testing.assert_allclose(retrieval.auc_of_rank([1, 3, 4], 4),
                               [1.0, 1 / 3, 0.0])

  def test_summarize(self):
    rank = np.array([1, 3, 7, 6, 2, 9])
    groups = ["b", "b", "a", "a", "c", "c"]  # per_caption in this order
    s = retrieval.summarize(rank, groups, num_refs=10)
    self.assertEqual(s["num_samples"], 6)
    self.assertEqual(s["num_captions"], 3)
    self.assertAlmostEqual(s["top1"], 1 / 6)
    self.assertAlmostEqual(s["top5"], 3 / 6)
    self.assertAlmostEqual(s["caption_top1_any"], 1 / 3)
    self.assertAlmostEqual(s["caption_top5_any"], 2 / 3)  # b and c
    self.assertEqual(s["median_rank"], 4.5)
    self.assertAlmostEqual(s["mean_auc"],
                           np.mean(1 - (rank - 1) / 9))
    self.assertEqual([p["caption"] for p in s["per_caption"]],
                     ["b", "a", "c"])
    self.assertEqual(s["per_caption"][0],
                     dict(caption="b", ranks=[1, 3], top1=0.5, top5=1.0))
    # top-k over samples = mean of per-caption rates at equal counts.
    self.assertAlmostEqual(
        s["top5"], np.mean([p["top5"] for p in s["per_caption"]]))


class NeighboursTest(absltest.TestCase):

  def test_cosine_neighbours_and_exclusion(self):
    keys = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], np.float32)
    query = np.array([[2, 0], [0, 3]], np.float32)  # scale is ignored
    np.testing.assert_array_equal(
        retrieval.text_neighbours(query, keys, 2), [[0, 1], [2, 1]])
    np.testing.assert_array_equal(
        retrieval.text_neighbours(query, keys, 2, exclude=np.array([0, -1])),
        [[1, 2], [2, 1]])
    with self.assertRaisesRegex(ValueError, "k=4"):
      retrieval.text_neighbours(query, keys, 4, exclude=np.array([0, -1]))

  def test_set_auc(self):
    d = np.array([[0.1, 0.2, 0.5, 0.6, 0.0],
                  [0.9, 0.8, 0.5, 0.6, 0.0],
                  [0.5, 0.5, 0.5, 0.5, 0.0]])
    pos = np.array([[0, 1], [0, 1], [0, 1]])
    # Reference 4 is each sample's own emoji: left out, though it is nearest.
    got = retrieval.set_auc(d, pos, exclude=np.array([4, 4, 4]))
    np.testing.assert_allclose(got, [1.0, 0.0, 0.5])
    # Without the exclusion the own emoji (distance 0) is a closer negative.
    got = retrieval.set_auc(d, pos, exclude=np.array([-1, -1, -1]))
    np.testing.assert_allclose(got, [2 / 3, 0.0, 1 / 3])


class DiversityTest(absltest.TestCase):

  def test_known_values(self):
    # Two captions of three samples: pairs within caption 0 are 1, 2, 3 apart
    # (mean 2), within caption 1 all 4; every cross-caption pair is 6.
    d = np.full((6, 6), 6.0)
    d[:3, :3] = [[0, 1, 2], [1, 0, 3], [2, 3, 0]]
    d[3:, 3:] = 4.0 - 4.0 * np.eye(3)
    got = retrieval.diversity(d, 3)
    self.assertEqual(got["per_caption"], [2.0, 4.0])
    self.assertEqual(got["within"], 3.0)
    self.assertEqual(got["between"], 6.0)
    self.assertEqual(got["ratio"], 0.5)

  def test_copies_have_no_diversity_and_one_caption_no_between(self):
    got = retrieval.diversity(np.zeros((4, 4)), 4)
    self.assertEqual((got["within"], got["between"], got["ratio"]),
                     (0.0, None, None))

  def test_bad_shapes(self):
    with self.assertRaisesRegex(ValueError, "square"):
      retrieval.diversity(np.zeros((4, 2)), 2)
    with self.assertRaisesRegex(ValueError, "group_size: 3"):
      retrieval.diversity(np.zeros((4, 4)), 3)
    with self.assertRaisesRegex(ValueError, "group_size: 1"):
      retrieval.diversity(np.zeros((4, 4)), 1)


class LpipsRetrievalTest(absltest.TestCase):

  def test_noisy_copies_find_their_original(self):
    refs = _shapes(9)
    rng = np.random.default_rng(1)
    true = np.repeat(np.arange(0, 9, 2), 2)  # captions 0, 2, 4, 6, 8 x 2
    noise = rng.normal(0, 12, (len(true),) + refs.shape[1:])
    samples = np.clip(refs[true] + noise, 0, 255).astype(np.uint8)
    d = lpips.distance_matrix(lpips.load_params(), samples, refs,
                              batch_size=4)
    rank = retrieval.ranks(d, true)
    s = retrieval.summarize(rank, true.tolist(), num_refs=len(refs))
    np.testing.assert_array_equal(rank, np.ones(len(true)))
    self.assertEqual((s["top1"], s["top5"], s["num_captions"]), (1.0, 1.0, 5))
    # And a wrong assignment is not rewarded.
    wrong = retrieval.ranks(d, (true + 1) % 9)
    self.assertTrue(np.all(wrong > 1))


if __name__ == "__main__":
  absltest.main()
