"""Scatter plots: round ticks, points where their coordinates say."""

from absl.testing import absltest
import numpy as np

from toprovar_jax.metrics import scatter


class NiceTicksTest(absltest.TestCase):

  def test_golden_ticks(self):
    self.assertEqual(scatter.nice_ticks(0.23, 0.97),
                     (0.2, 0.4, 0.6, 0.8, 1.0))
    self.assertEqual(scatter.nice_ticks(1.0, 4.38), (1.0, 2.0, 3.0, 4.0, 5.0))
    self.assertEqual(scatter.nice_ticks(0.0, 50.0), (0, 20, 40, 60))
    lo, *_, hi = scatter.nice_ticks(1.0, 1.0)  # widened
    self.assertLess(lo, 1.0)
    self.assertGreater(hi, 1.0)
    with self.assertRaisesRegex(ValueError, "not finite"):
      scatter.nice_ticks(0.0, float("inf"))


class ScatterPlotTest(absltest.TestCase):

  def test_markers_sit_at_their_coordinates(self):
    img = scatter.scatter_plot([1.0, 3.0, 2.0], [1.0, 0.4, None],
                               ["dense", "sparse", "missing"],
                               x_label="FLOP reduction", y_label="SSIM",
                               size=(400, 300))
    self.assertEqual(img.shape, (300, 400, 3))
    self.assertEqual(img.dtype, np.uint8)
    # Axes: x ticks 1..3 over [80, 370], y ticks 0.4..1 over [245, 40].
    for x, y, colour in ((80, 40, scatter._COLOURS[0]),
                         (370, 245, scatter._COLOURS[1])):
      np.testing.assert_array_equal(img[y, x], colour)

  def test_rejects_bad_input(self):
    with self.assertRaisesRegex(ValueError, "labels"):
      scatter.scatter_plot([1.0], [1.0], [], x_label="x", y_label="y")
    with self.assertRaisesRegex(ValueError, "no point"):
      scatter.scatter_plot([1.0], [float("nan")], ["a"], x_label="x",
                           y_label="y")


if __name__ == "__main__":
  absltest.main()
