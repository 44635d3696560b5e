"""experiments/ship_weights.py: a new export is checked, then swapped in;
a bad one leaves the target folder as it was."""

import json
import pathlib
import shutil
import sys
import tempfile
from unittest import mock

from absl import flags
from absl.testing import absltest
from absl.testing import flagsaver

import jax
import numpy as np

from experiments import ship_weights
from toprovar_jax.models import config as config_lib
from toprovar_jax.weights import loading
from toprovar_jax.weights import shards
from toprovar_jax.weights import strict

FLAGS = flags.FLAGS


def _tempdir(test):
  path = tempfile.mkdtemp()
  test.addCleanup(shutil.rmtree, path, ignore_errors=True)
  return pathlib.Path(path)


# ship_weights on a small variant with a BSQ tokenizer: the same checks as
# for the emoji model, on exports made here (no trained weights needed).
_SHIP_MODEL = "infinity_tiny"


def _ship(source, dest):
  argv = ["ship_weights", f"--tokenizer={source}", f"--transformer={source}",
          f"--dest={dest}", f"--model={_SHIP_MODEL}"]
  with flagsaver.flagsaver(), mock.patch.object(sys, "argv", argv):
    ship_weights.main(FLAGS(argv))


class ShipWeightsTest(absltest.TestCase):

  def _source(self):
    """Exports of zero weights in the model's layout, as training writes."""
    source = _tempdir(self) / "export"
    model = config_lib.get_variant(_SHIP_MODEL)
    for name, abstract in (
        (shards.TRANSFORMER, loading.abstract_transformer(model)),
        (shards.TOKENIZER, loading.abstract_tokenizer(
            model, config_lib.get_tokenizer(_SHIP_MODEL)))):
      shards.write_shards(source, jax.tree.map(
          lambda x: np.zeros(x.shape, x.dtype), abstract), name=name, step=3)
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
