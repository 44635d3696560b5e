"""Run outputs on disk: the workdir guard and atomic writes."""

import json
import os
import pathlib
import tempfile

from absl.testing import absltest
import numpy as np
from PIL import Image

from toprovar_jax import io


class WorkdirTest(absltest.TestCase):

  def test_new_empty_and_refused(self):
    with tempfile.TemporaryDirectory() as root:
      new = io.prepare_workdir(os.path.join(root, "a", "b"), False)
      self.assertTrue(new.is_dir() and new.is_absolute())
      self.assertEqual(io.prepare_workdir(new, False), new)  # empty: fine
      (new / "old.png").write_bytes(b"x")
      with self.assertRaisesRegex(io.WorkdirNotEmptyError,
                                  r"holds 1 entries \(old.png\).*--overwrite"):
        io.prepare_workdir(new, False)
      self.assertEqual(io.prepare_workdir(new, True), new)
      self.assertEqual((new / "old.png").read_bytes(), b"x")  # nothing deleted
      with self.assertRaises(NotADirectoryError):
        io.prepare_workdir(new / "old.png", True)
      self.assertEqual(sorted(p.name for p in new.iterdir()), ["old.png"])

  def test_unwritable_workdir_fails_before_compute(self):
    # procfs refuses new files even to root (chmod would not stop root).
    for path in ("/proc", "/proc/toprovar_run"):
      with self.assertRaisesRegex(io.WorkdirNotWritableError,
                                  f"^workdir '{path}' cannot be written"):
        io.prepare_workdir(path, True)


class AtomicTest(absltest.TestCase):

  def test_writes_and_leaves_no_temp_files(self):
    with tempfile.TemporaryDirectory() as d:
      d = pathlib.Path(d)
      io.write_json_atomic(d / "r.json", {"a": [1, 2]})
      self.assertEqual(json.loads((d / "r.json").read_text()), {"a": [1, 2]})
      io.write_text_atomic(d / "t.md", "é\n")
      self.assertEqual((d / "t.md").read_text(encoding="utf-8"), "é\n")
      self.assertEqual(sorted(p.name for p in d.iterdir()), ["r.json", "t.md"])

  def test_a_failed_write_keeps_the_old_file(self):
    with tempfile.TemporaryDirectory() as d:
      d = pathlib.Path(d)
      io.write_json_atomic(d / "r.json", {"ok": 1})
      with self.assertRaises(ValueError):  # NaN is not JSON
        io.write_json_atomic(d / "r.json", {"bad": float("nan")})

      def fail(f):
        f.write(b"half")
        raise OSError("disk full")
      with self.assertRaisesRegex(OSError, "disk full"):
        io.write_atomic(d / "r.json", fail)
      self.assertEqual(json.loads((d / "r.json").read_text()), {"ok": 1})
      self.assertEqual([p.name for p in d.iterdir()], ["r.json"])


class ImageTest(absltest.TestCase):

  def test_grid_layout_and_png(self):
    images = np.zeros((3, 4, 5, 3), np.uint8)
    images[1] = 100
    grid = io.image_grid(images, num_cols=2, pad=1, pad_value=7)
    self.assertEqual(grid.shape, (2 * 5 + 1, 2 * 6 + 1, 3))
    np.testing.assert_array_equal(grid[1:5, 7:12], 100)  # image 1: row 0, col 1
    self.assertEqual(int(grid[0, 0, 0]), 7)
    with tempfile.TemporaryDirectory() as d:
      path = io.save_image_grid(os.path.join(d, "g.png"), images)
      with Image.open(path) as img:
        np.testing.assert_array_equal(np.asarray(img),
                                      io.image_grid(images))

  def test_bad_images_are_refused(self):
    with tempfile.TemporaryDirectory() as d:
      with self.assertRaisesRegex(TypeError, "uint8"):
        io.write_png_atomic(os.path.join(d, "x.png"),
                            np.zeros((2, 2, 3), np.float32))
      with self.assertRaisesRegex(ValueError, r"\(H, W, 3\)"):
        io.write_png_atomic(os.path.join(d, "x.png"),
                            np.zeros((2, 2), np.uint8))
      self.assertEqual(os.listdir(d), [])


if __name__ == "__main__":
  absltest.main()
