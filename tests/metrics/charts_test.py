"""Calibration figures: shapes, colours and the greyed pruned tokens."""

from absl.testing import absltest
import numpy as np

from toprovar_jax.metrics import charts


class ChartsTest(absltest.TestCase):

  def test_line_and_bar_charts_are_rgb_images(self):
    for img in (charts.rho_chart([0.0, 0.2, 0.5, 0.45], 0.4, 2, 1, 2),
                charts.rho_chart([0.0, 0.1], 0.4, None, 1, None),
                charts.layer_ratio_chart([1.2, 30.0, float("inf")], 5.0,
                                         (1, 2)),
                charts.frontier_chart([(1.5, 0.9), (2.5, 0.8)], target=0.85,
                                      chosen=0),
                charts.frontier_chart([])):
      self.assertEqual(img.dtype, np.uint8)
      self.assertEqual(img.shape, (400, 640, 3))
      self.assertLess(img.min(), 255)  # something is drawn

  def test_layer_ratio_bars_are_coloured_by_kind(self):
    img = charts.layer_ratio_chart([10.0, 10.0], 5.0, (1,))
    colours = {tuple(p) for p in img.reshape(-1, 3)}
    self.assertIn(charts.ORANGE, colours)
    self.assertIn(charts.BLUE, colours)

  def test_colormap_ends(self):
    np.testing.assert_array_equal(charts.colormap(np.array([0.0, 1.0, 2.0])),
                                  [[68, 1, 84], [253, 231, 37],
                                   [253, 231, 37]])

  def test_map_grid(self):
    img = charts.map_grid(np.random.default_rng(0).uniform(size=(10, 4, 4)),
                          [f"l{i}" for i in range(10)], side=32, per_row=8)
    self.assertEqual(img.shape, (2 * 34 + 2, 160 + 8 * 34 + 2, 3))

  def test_kept_token_grid_greys_pruned_tokens(self):
    images = np.zeros((1, 8, 8, 3), np.uint8)
    mask = np.array([[[True, False], [False, False]]])
    img = charts.kept_token_grid(images, {3: mask}, side=8)
    # Tiles start after the 140-pixel label strip and a 2-pixel pad.
    second = img[2:10, 140 + 2 + 10:140 + 2 + 18]
    self.assertEqual(second[0, 0].tolist(), [0, 0, 0])  # kept: unchanged
    self.assertEqual(second[7, 7].tolist(), [120, 120, 120])  # pruned: grey


if __name__ == "__main__":
  absltest.main()
