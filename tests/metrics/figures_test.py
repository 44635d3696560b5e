"""Captioned grids: layout, tiles in place, labels drawn in their row."""

from absl.testing import absltest
import numpy as np

from toprovar_jax.metrics import figures


class CaptionedGridTest(absltest.TestCase):

  def test_layout_tiles_and_labels(self):
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 255, (3, 2, 20, 20, 3), dtype=np.uint8)
    labels = ["red apple", "", "a much longer caption that has to wrap"]
    grid = figures.captioned_grid(rows, labels, label_width=120, pad=2)
    self.assertEqual(grid.shape, (3 * 22 + 2, 120 + 2 * 22 + 2, 3))
    self.assertEqual(grid.dtype, np.uint8)
    for r in range(3):
      for k in range(2):
        y, x = 2 + r * 22, 120 + 2 + k * 22
        np.testing.assert_array_equal(grid[y:y + 20, x:x + 20], rows[r, k])
    strip = grid[:, :120].min(axis=-1)
    ink = [np.sum(strip[2 + r * 22:22 + r * 22] < 128) for r in range(3)]
    self.assertGreater(ink[0], 0)
    self.assertEqual(ink[1], 0)  # empty label: white
    self.assertGreater(ink[2], 0)

  def test_rejects_mismatched_labels(self):
    rows = np.zeros((2, 1, 8, 8, 3), np.uint8)
    with self.assertRaisesRegex(ValueError, "labels"):
      figures.captioned_grid(rows, ["one"])
    with self.assertRaisesRegex(ValueError, "uint8"):
      figures.captioned_grid(rows.astype(np.float32), ["a", "b"])


class ColumnGridTest(absltest.TestCase):

  def test_layout_tiles_and_labels(self):
    rng = np.random.default_rng(1)
    cols = rng.integers(0, 255, (3, 2, 20, 20, 3), dtype=np.uint8)
    labels = ["red apple", "", "a much longer caption that has to wrap"]
    grid = figures.column_grid(cols, labels, label_height=40, pad=2)
    self.assertEqual(grid.shape, (40 + 2 * 22 + 2, 3 * 22 + 2, 3))
    for c in range(3):
      for k in range(2):  # tile k of column c: row k, column c
        y, x = 40 + 2 + k * 22, 2 + c * 22
        np.testing.assert_array_equal(grid[y:y + 20, x:x + 20], cols[c, k])
    strip = grid[:40].min(axis=-1)
    ink = [np.sum(strip[:, 2 + c * 22:22 + c * 22] < 128) for c in range(3)]
    self.assertGreater(ink[0], 0)
    self.assertEqual(ink[1], 0)  # empty label: white
    self.assertGreater(ink[2], 0)

  def test_rejects_mismatched_labels(self):
    cols = np.zeros((2, 1, 8, 8, 3), np.uint8)
    with self.assertRaisesRegex(ValueError, "labels"):
      figures.column_grid(cols, ["one"])
    with self.assertRaisesRegex(ValueError, "uint8"):
      figures.column_grid(cols.astype(np.float32), ["a", "b"])


class TableGridTest(absltest.TestCase):

  def test_row_and_column_labels(self):
    rng = np.random.default_rng(2)
    tiles = rng.integers(0, 255, (2, 3, 20, 20, 3), dtype=np.uint8)
    grid = figures.table_grid(tiles, ["dense", "sparse"], ["a", "", "c"],
                              label_width=100, label_height=30)
    self.assertEqual(grid.shape, (30 + 2 * 22 + 2, 100 + 3 * 22 + 2, 3))
    for r in range(2):
      for k in range(3):
        y, x = 30 + 2 + r * 22, 100 + 2 + k * 22
        np.testing.assert_array_equal(grid[y:y + 20, x:x + 20], tiles[r, k])
    header = grid[:30].min(axis=-1)
    ink = [np.sum(header[:, 100 + 2 + k * 22:100 + 22 + k * 22] < 128)
           for k in range(3)]
    self.assertGreater(ink[0], 0)
    self.assertEqual(ink[1], 0)  # empty caption: white
    self.assertGreater(ink[2], 0)
    self.assertGreater(np.sum(grid[30:, :100].min(axis=-1) < 128), 0)

  def test_rejects_mismatched_column_labels(self):
    tiles = np.zeros((1, 2, 8, 8, 3), np.uint8)
    with self.assertRaisesRegex(ValueError, "column_labels"):
      figures.table_grid(tiles, ["row"], ["one"])


if __name__ == "__main__":
  absltest.main()
