"""experiments/ship_weights.py: a new export is checked, then swapped in;
a bad one leaves the target folder as it was."""

import json
import os
import pathlib
import shutil
import sys
import tempfile
from unittest import mock

from absl import flags
from absl.testing import absltest
from absl.testing import flagsaver

from experiments import ship_weights
from toprovar_jax.weights import embedded
from toprovar_jax.weights import shards
from toprovar_jax.weights import strict

FLAGS = flags.FLAGS


def _tempdir(test):
  path = tempfile.mkdtemp()
  test.addCleanup(shutil.rmtree, path, ignore_errors=True)
  return pathlib.Path(path)


def _ship(source, dest):
  argv = ["ship_weights", f"--tokenizer={source}", f"--transformer={source}",
          f"--dest={dest}"]
  with flagsaver.flagsaver(), mock.patch.object(sys, "argv", argv):
    ship_weights.main(FLAGS(argv))


class ShipWeightsTest(absltest.TestCase):

  def _source(self):
    """Hard links to the shipped export: a source folder with no copying."""
    source = _tempdir(self) / "export"
    source.mkdir()
    shipped = embedded.embedded_dir("emoji")
    for name in (shards.TRANSFORMER, shards.TOKENIZER):
      for path in shards.export_files(shipped, name):
        try:
          os.link(path, source / path.name)
        except OSError:  # another filesystem
          shutil.copy2(path, source / path.name)
    return source

  def test_ships_and_keeps_the_readme(self):
    source = self._source()
    dest = _tempdir(self) / "emoji"
    dest.mkdir()
    (dest / "README.md").write_text("provenance")
    (dest / "transformer_007.npz").write_bytes(b"stale")
    _ship(source, dest)
    self.assertEqual(
        sorted(p.name for p in dest.iterdir()),
        sorted(["README.md"] + [p.name for n in ("transformer", "tokenizer")
                                for p in shards.export_files(source, n)]))
    self.assertEqual((dest / "README.md").read_text(), "provenance")
    self.assertEqual(sorted(p.name for p in dest.parent.iterdir()), ["emoji"])

  def test_a_bad_export_leaves_the_target_untouched(self):
    source = self._source()
    path = shards.manifest_path(source, shards.TRANSFORMER)
    manifest = json.loads(path.read_text())
    path.unlink()  # a hard link: write a new file, not through the link
    manifest["leaves"]["stem/head/bias"]["shape"] = [1]
    path.write_text(json.dumps(manifest))
    dest = _tempdir(self) / "emoji"
    dest.mkdir()
    (dest / "README.md").write_text("old")
    (dest / "transformer_000.npz").write_bytes(b"old weights")
    with self.assertRaisesRegex(strict.ConversionError, "stem/head/bias"):
      _ship(source, dest)
    self.assertEqual(sorted(p.name for p in dest.parent.iterdir()), ["emoji"])
    self.assertEqual((dest / "transformer_000.npz").read_bytes(),
                     b"old weights")


if __name__ == "__main__":
  absltest.main()
