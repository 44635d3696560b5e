"""Run outputs on disk: the workdir guard, atomic writes and publishing a
run's outputs as one set."""

import json
import os
import pathlib
import tempfile
from unittest import mock

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


def _snapshot(folder):
  """{name: (bytes or None for a folder, mtime_ns)} of every entry of a
  folder, hidden ones too."""
  return {p.name: (None if p.is_dir() else p.read_bytes(),
                   p.stat().st_mtime_ns)
          for p in sorted(pathlib.Path(folder).iterdir())}


def _publish(workdir, files, **record):
  """`io.publish` with a record that lists `files` as it must."""
  return io.publish(workdir, files,
                    record=dict(record, outputs=sorted(files)))


def _samples(n, tag):
  return {f"sample_{i:04d}.png": f"{tag}{i}".encode() for i in range(n)}


class PublishTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    # tempfile, not create_tempdir: pytest does not parse absl's flags.
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.workdir = pathlib.Path(tmp.name)

  def _names(self):
    return sorted(p.name for p in self.workdir.iterdir())

  def _previous_run(self):
    """A complete run of six samples, a grid and config.json, plus a file
    of the user's."""
    files = dict(_samples(6, "old"), **{"grid_a.png": b"ga",
                                        "config.json": b"{}"})
    _publish(self.workdir, files, run="old")
    (self.workdir / "notes.txt").write_text("mine")
    return files

  def test_writes_the_set_and_the_record_last(self):
    (self.workdir / ".results.json.staging-killed").mkdir()  # a killed run's
    seen = []
    real = io.write_bytes_atomic

    def spy(path, data):
      if pathlib.Path(path).name == "results.json":
        seen.extend(self._names())  # what exists when the record lands
      return real(path, data)
    image = np.full((2, 3, 3), 9, np.uint8)
    with mock.patch.object(io, "write_bytes_atomic", side_effect=spy):
      path = _publish(self.workdir, {"a.png": io.png_writer(image),
                                     "b.txt": b"text"}, run=1)
    self.assertEqual(path, self.workdir / "results.json")
    self.assertContainsSubset(["a.png", "b.txt"], seen)
    self.assertNotIn("results.json", seen)
    self.assertEqual(self._names(), ["a.png", "b.txt", "results.json"])
    self.assertEqual(json.loads(path.read_text()),
                     {"run": 1, "outputs": ["a.png", "b.txt"]})
    with Image.open(self.workdir / "a.png") as img:
      np.testing.assert_array_equal(np.asarray(img), image)

  def test_a_failed_write_leaves_the_previous_run_intact(self):
    self._previous_run()
    before = _snapshot(self.workdir)
    calls = []

    def writer(data):
      def write(f):
        calls.append(data)
        if len(calls) == 3:
          f.write(b"half")
          raise OSError("disk full")
        f.write(data)
      return write
    new = {name: writer(b"new") for name in _samples(4, "")}
    with self.assertRaisesRegex(OSError, "disk full"):
      _publish(self.workdir, new, run="new")
    self.assertLen(calls, 3)
    # Same names (no staging folder or pending note), bytes and mtimes.
    self.assertEqual(_snapshot(self.workdir), before)

  def test_fewer_outputs_replace_the_previous_set_and_keep_user_files(self):
    self._previous_run()
    new = dict(_samples(4, "new"), **{"grid.png": b"g"})
    _publish(self.workdir, new, run="new")
    self.assertEqual(self._names(), sorted([*new, "notes.txt",
                                            "results.json"]))
    for name, data in new.items():
      self.assertEqual((self.workdir / name).read_bytes(), data)
    self.assertEqual((self.workdir / "notes.txt").read_text(), "mine")
    record = json.loads((self.workdir / "results.json").read_text())
    self.assertEqual((record["run"], record["outputs"]), ("new", sorted(new)))

  def test_a_crash_before_the_record_leaves_none_and_is_cleaned_up(self):
    self._previous_run()
    real = io.write_bytes_atomic

    def crash_on_record(path, data):
      if pathlib.Path(path).name == "results.json":
        raise KeyboardInterrupt  # killed between removal and the record
      return real(path, data)
    crashed = dict(_samples(2, "crash"), **{"crash_only.png": b"c"})
    with mock.patch.object(io, "write_bytes_atomic",
                           side_effect=crash_on_record):
      with self.assertRaises(KeyboardInterrupt):
        _publish(self.workdir, crashed, run="crashed")
    names = self._names()
    self.assertNotIn("results.json", names)
    self.assertNotIn("sample_0005.png", names)  # the previous set went
    self.assertFalse([n for n in names if "staging" in n])
    # The next run removes the crashed run's files too (its pending note).
    _publish(self.workdir, _samples(1, "next"), run="next")
    self.assertEqual(self._names(),
                     ["notes.txt", "results.json", "sample_0000.png"])

  def test_only_plain_names_a_record_listed_are_removed(self):
    outside = self.workdir / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep")
    run = self.workdir / "run"
    (run / "folder").mkdir(parents=True)
    (run / ".hidden").write_text("keep")
    (run / "listed.png").write_text("old")
    (run / "results.json").write_text(json.dumps({"outputs": [
        "../outside/victim", "folder", ".hidden", "listed.png", 3]}))
    _publish(run, {"new.png": b"n"})
    self.assertEqual((outside / "victim").read_text(), "keep")
    self.assertEqual(sorted(p.name for p in run.iterdir()),
                     [".hidden", "folder", "new.png", "results.json"])

  def test_bad_names_and_records_change_nothing(self):
    self._previous_run()
    (self.workdir / "a_folder").mkdir()
    before = _snapshot(self.workdir)
    for files, record, error, pattern in (
        ({"x/y.png": b""}, None, ValueError, "plain file name"),
        ({".x.png": b""}, None, ValueError, "plain file name"),
        ({"results.json": b""}, None, ValueError, "plain file name"),
        ({"a.png": b""}, {"outputs": ["b.png"]}, ValueError, "must list"),
        ({"a.png": b""}, {}, ValueError, "must list"),
        ({"a.png": b""}, {"outputs": ["a.png"], "x": float("nan")},
         ValueError, "JSON"),
        ({"a_folder": b""}, None, IsADirectoryError, "is a folder")):
      with self.assertRaisesRegex(error, pattern):
        io.publish(self.workdir, files,
                   record=({"outputs": sorted(files)} if record is None
                           else record))
      self.assertEqual(_snapshot(self.workdir), before)


if __name__ == "__main__":
  absltest.main()
