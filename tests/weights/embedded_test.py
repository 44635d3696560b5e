"""The weights shipped in the package (`shards.embedded`): names, layout,
sizes. Shapes and files only; tests/experiments/emoji_main_test.py checks
what the trained weights draw."""

import pathlib
import shutil
import tempfile

from absl.testing import absltest
import jax
import numpy as np

from toprovar_jax.models import config as config_lib
from toprovar_jax.weights import embedded
from toprovar_jax.weights import loading
from toprovar_jax.weights import shards

_EMOJI = config_lib.get_variant("emoji")
_EMOJI_TOK = config_lib.get_tokenizer("emoji")


def _tempdir(test):
  path = tempfile.mkdtemp()
  test.addCleanup(shutil.rmtree, path, ignore_errors=True)
  return pathlib.Path(path)


class SizesTest(absltest.TestCase):

  def test_sizes(self):
    directory = _tempdir(self)
    (directory / "a.npz").write_bytes(b"x" * 10)
    (directory / "b.npz").write_bytes(b"x" * 20)
    paths = [directory / "a.npz", directory / "b.npz"]
    self.assertEqual(embedded.check_sizes(paths, max_total=30, max_file=20), 30)
    with self.assertRaisesRegex(shards.WeightsError, "b.npz: 20 bytes"):
      embedded.check_sizes(paths, max_total=100, max_file=19)
    with self.assertRaisesRegex(shards.WeightsError, "total 30 bytes"):
      embedded.check_sizes(paths, max_total=29, max_file=20)


class EmojiExportSizeTest(absltest.TestCase):
  """What training exports for the emoji variant fits the shipping limits.

  Runs on the variant's shapes (zero weights), so it holds before any
  training: the shipped files of model v2 will be these files.
  """

  def test_export_fits(self):
    directory = _tempdir(self)
    for name, abstract in (
        (shards.TRANSFORMER, loading.abstract_transformer(_EMOJI)),
        (shards.TOKENIZER, loading.abstract_tokenizer(_EMOJI, _EMOJI_TOK))):
      shards.write_shards(directory, jax.tree.map(
          lambda x: np.zeros(x.shape, x.dtype), abstract), name=name,
                          max_bytes=shards.MAX_FILE_BYTES)
    (directory / "README.md").write_text("x" * 8000)  # provenance notes
    files = sorted(p for p in directory.iterdir())
    total = embedded.check_sizes(files)  # <= 16 MiB each, <= 30 MB in all
    self.assertBetween(total, 27_000_000, 27_200_000)
    self.assertEqual([p.name for p in files], [
        "README.md", "tokenizer.manifest.json", "tokenizer_000.npz",
        "transformer.manifest.json", "transformer_000.npz",
        "transformer_001.npz"])


class ShippedWeightsTest(absltest.TestCase):
  """Shapes, names and sizes of toprovar_jax/assets/emoji (not values)."""

  def test_embedded_emoji_is_packaged(self):
    self.assertIn("emoji", embedded.embedded_names())
    self.assertTrue((embedded.embedded_dir("emoji") / "README.md").is_file())

  def test_manifests_match_the_emoji_variant(self):
    directory = embedded.embedded_dir("emoji")
    for name, abstract in (
        (shards.TRANSFORMER, loading.abstract_transformer(_EMOJI)),
        (shards.TOKENIZER, loading.abstract_tokenizer(_EMOJI, _EMOJI_TOK))):
      manifest = shards.read_manifest(directory, name)
      shards.check_shapes(shards._manifest_tree(manifest), abstract,
                           context=name)
      self.assertIsNotNone(shards.step_of(manifest))
      for path in shards.export_files(directory, name):
        self.assertTrue(path.is_file(), path)

  def test_within_the_shipping_limits(self):
    directory = embedded.embedded_dir("emoji")
    files = sorted(p for p in directory.iterdir() if p.is_file())
    total = embedded.check_sizes(files)
    self.assertLessEqual(total, 30 * 10**6)
    listed = {p.name for n in (shards.TRANSFORMER, shards.TOKENIZER)
              for p in shards.export_files(directory, n)}
    # Nothing ships that the manifests do not list, except the README.
    self.assertEqual({p.name for p in files} - listed, {"README.md"})

  def test_bad_embedded_name_is_refused(self):
    with self.assertRaisesRegex(shards.WeightsError, "embedded-weights"):
      embedded.embedded_dir("../emoji")


if __name__ == "__main__":
  absltest.main()
