"""Tests for toprovar_jax.metrics.background (position-fixed marks)."""

from absl.testing import absltest
import numpy as np

from toprovar_jax.metrics import background

_S = 64


def _refs(n):
  """n references: ink in a 16 px square in the middle, nowhere else."""
  rgba = np.zeros((n, _S, _S, 4), np.uint8)
  rgba[:, 24:40, 24:40] = 255
  return rgba


class BackgroundDeviationTest(absltest.TestCase):

  def test_white_background_scores_zero_whatever_the_ink(self):
    images = np.full((3, _S, _S, 3), 255, np.uint8)
    images[:, 24:40, 24:40] = 0  # the ink itself is not background
    got = background.background_deviation(images, _refs(3))
    self.assertEqual((got["mean"], got["peak"]), (0.0, 0.0))
    self.assertEqual(set(got["corners"].values()), {0.0})

  def test_a_fixed_speck_is_found(self):
    # Every image has the same 3x3 speck at (12, 14), 90 below white in one
    # channel; one image also has noise elsewhere, which averages out.
    images = np.full((4, _S, _S, 3), 255, np.uint8)
    images[:, 11:14, 13:16, 1] = 165
    images[0, 50:52, 5:7] = 200
    got = background.background_deviation(images, _refs(4))
    self.assertEqual(got["peak"], 90.0)
    self.assertIn(tuple(got["peak_at"]), {(r, c) for r in range(11, 14)
                                          for c in range(13, 16)})
    # The speck lies in the top-left 24 px square (rows and columns 2-25):
    # 9 of its pixels, 90 each; the 8x8 of it within 6 px of the ink
    # (rows and columns 18-25) is no background and not counted.
    self.assertAlmostEqual(got["corners"]["top_left"], 9 * 90 / (576 - 64))
    self.assertEqual(got["corners"]["top_right"], 0.0)
    self.assertEqual(got["num_images"], 4)

  def test_margin_leaves_the_glyph_edge_out(self):
    images = np.full((1, _S, _S, 3), 255, np.uint8)
    images[:, 22:42, 22:42] = 0  # 2 px of spill around the ink
    self.assertEqual(background.background_deviation(
        images, _refs(1), margin=2)["mean"], 0.0)
    self.assertGreater(background.background_deviation(
        images, _refs(1), margin=1)["mean"], 0.0)

  def test_no_background_position_has_no_peak(self):
    rgba = np.full((2, _S, _S, 4), 255, np.uint8)  # ink everywhere
    got = background.background_deviation(
        np.zeros((2, _S, _S, 3), np.uint8), rgba)
    self.assertEqual((got["peak"], got["peak_at"], got["mean"]),
                     (None, None, 0.0))

  def test_shapes_must_match(self):
    with self.assertRaisesRegex(ValueError, "images"):
      background.background_deviation(np.zeros((2, 8, 8, 3), np.uint8),
                                       np.zeros((2, 8, 8, 3), np.uint8))


if __name__ == "__main__":
  absltest.main()
