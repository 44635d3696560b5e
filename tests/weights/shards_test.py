"""The inference-side npz-shard reader, the shipped assets and ship_weights.

`toprovar_jax.weights` reads what `training.loop.export_params` writes
without importing training code; the round trip here checks the values
against the exported tree. Tests on the shipped weights check shapes, sizes
and files; tests/emoji_main_test.py checks what the trained weights draw.
"""

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
import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from experiments import ship_weights
from toprovar_jax import pipeline
from toprovar_jax import weights
from toprovar_jax.convert import common
from toprovar_jax.models import config as config_lib
from toprovar_jax.training import loop

FLAGS = flags.FLAGS
_EMOJI = config_lib.get_variant("emoji")
_EMOJI_TOK = config_lib.get_tokenizer("emoji")
# Small enough that "big" (64 rows of 256 bf16 bytes) splits into parts.
_MAX_BYTES = 4096 + 512 + 2048


def _tree():
  rng = np.random.default_rng(0)
  return {
      "params": {
          "big": rng.normal(size=(64, 128)).astype(np.float32),
          "conv": {"kernel": rng.normal(size=(3, 3, 4, 8)).astype(np.float32),
                   "bias": np.zeros((8,), np.float32)},
          "scale": np.float32(1.5),
      },
      "count": np.arange(5, dtype=np.int32),
  }


def _as_stored(x):
  """What export_params keeps of a leaf: floats rounded to bf16."""
  x = np.asarray(x)
  return (x.astype(ml_dtypes.bfloat16)
          if np.issubdtype(x.dtype, np.floating) else x)


def _abstract(tree):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.float32
                                     if np.issubdtype(np.asarray(x).dtype,
                                                      np.floating)
                                     else np.asarray(x).dtype), tree)


def _tempdir(test):
  path = tempfile.mkdtemp()
  test.addCleanup(shutil.rmtree, path, ignore_errors=True)
  return pathlib.Path(path)


def _export(test, name="params"):
  directory = _tempdir(test)
  loop.export_params(directory, _tree(), name=name, step=7,
                     max_bytes=_MAX_BYTES)
  return directory


class RoundTripTest(absltest.TestCase):

  def test_reads_what_training_exports(self):
    directory = _export(self)
    got, manifest = weights.load_shards(directory, "params")
    self.assertEqual(manifest, json.loads(
        (directory / "params.manifest.json").read_text()))
    self.assertEqual(weights.step_of(manifest), 7)
    # The big leaf was split over several parts, and shards over files.
    self.assertGreater(len(manifest["leaves"]["params/big"]["parts"]), 1)
    self.assertGreater(len(manifest["files"]), 1)
    # bf16 storage: float leaves come back as the bf16 rounding of the
    # originals, integer leaves unchanged.
    want = jax.tree.map(_as_stored, _tree())
    chex.assert_trees_all_equal_structs(got, want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      self.assertEqual(g.dtype, w.dtype)
      np.testing.assert_array_equal(g, w)
    self.assertEqual(got["params"]["big"].dtype, ml_dtypes.bfloat16)
    np.testing.assert_array_equal(got["count"], np.arange(5))

  def test_dtype_cast_applies_to_float_leaves_only(self):
    directory = _export(self)
    got, _ = weights.load_shards(directory, "params", dtype=np.float32)
    want = jax.tree.map(
        lambda x: _as_stored(x).astype(np.float32)
        if np.issubdtype(np.asarray(x).dtype, np.floating) else _as_stored(x),
        _tree())
    chex.assert_trees_all_equal_structs(got, want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      self.assertEqual(g.dtype, w.dtype)
      np.testing.assert_array_equal(g, w)
    self.assertEqual(got["count"].dtype, np.int32)

  def test_load_params_gives_model_dtypes(self):
    directory = _export(self)
    abstract = _abstract(_tree())
    params, manifest = weights.load_params(directory, "params", abstract)
    self.assertEqual(manifest["step"], 7)
    chex.assert_trees_all_equal_shapes_and_dtypes(params, abstract)
    chex.assert_trees_all_close(params["params"]["conv"]["kernel"],
                                _tree()["params"]["conv"]["kernel"],
                                rtol=1e-2)


class ValidationTest(absltest.TestCase):

  def test_wrong_shape_names_the_leaf(self):
    directory = _export(self)
    abstract = _abstract(_tree())
    abstract["params"]["conv"]["kernel"] = jax.ShapeDtypeStruct(
        (3, 3, 4, 16), jnp.float32)
    with self.assertRaisesRegex(common.ConversionError,
                                r"params/conv/kernel \(got \(3, 3, 4, 8\)"):
      weights.load_params(directory, "params", abstract, context="ctx")

  def test_missing_and_unexpected_leaves_are_listed(self):
    directory = _export(self)
    abstract = _abstract(_tree())
    del abstract["count"]
    abstract["params"]["extra"] = jax.ShapeDtypeStruct((2,), jnp.float32)
    with self.assertRaisesRegex(common.ConversionError,
                                r"missing keys.*params/extra(.|\n)*"
                                r"unexpected keys.*count"):
      weights.load_params(directory, "params", abstract)

  def test_int_leaf_where_model_wants_float_is_named(self):
    directory = _export(self)
    abstract = _abstract(_tree())
    abstract["count"] = jax.ShapeDtypeStruct((5,), jnp.float32)
    with self.assertRaisesRegex(weights.WeightsError, "leaf 'count' is int32"):
      weights.load_params(directory, "params", abstract)

  def test_missing_shard_names_the_file(self):
    directory = _export(self)
    (directory / "params_001.npz").unlink()
    with self.assertRaisesRegex(FileNotFoundError, "params_001.npz"):
      weights.load_shards(directory, "params")

  def test_corrupt_shard_names_the_file(self):
    directory = _export(self)
    (directory / "params_000.npz").write_bytes(b"not a zip")
    with self.assertRaisesRegex(weights.WeightsError, "params_000.npz"):
      weights.load_shards(directory, "params")

  def test_missing_manifest_names_the_file(self):
    with self.assertRaisesRegex(FileNotFoundError, "nope.manifest.json"):
      weights.load_shards(_tempdir(self), "nope")

  def test_shard_outside_the_folder_is_refused(self):
    directory = _export(self)
    path = weights.manifest_path(directory, "params")
    manifest = json.loads(path.read_text())
    manifest["leaves"]["count"]["parts"][0]["file"] = "../evil.npz"
    path.write_text(json.dumps(manifest))
    with self.assertRaisesRegex(weights.WeightsError,
                                "leaf 'count'.*bare .npz"):
      weights.load_shards(directory, "params")

  def test_manifest_shape_that_disagrees_with_the_data_names_the_leaf(self):
    directory = _export(self)
    path = weights.manifest_path(directory, "params")
    manifest = json.loads(path.read_text())
    manifest["leaves"]["count"]["shape"] = [6]
    path.write_text(json.dumps(manifest))
    with self.assertRaisesRegex(weights.WeightsError, "leaf 'count'"):
      weights.load_shards(directory, "params")

  def test_unknown_format_is_refused(self):
    directory = _export(self)
    path = weights.manifest_path(directory, "params")
    manifest = json.loads(path.read_text())
    manifest["format"] = "pickle"
    path.write_text(json.dumps(manifest))
    with self.assertRaisesRegex(weights.WeightsError, "format 'pickle'"):
      weights.load_shards(directory, "params")

  def test_sizes(self):
    directory = _tempdir(self)
    (directory / "a.npz").write_bytes(b"x" * 10)
    (directory / "b.npz").write_bytes(b"x" * 20)
    paths = [directory / "a.npz", directory / "b.npz"]
    self.assertEqual(weights.check_sizes(paths, max_total=30, max_file=20), 30)
    with self.assertRaisesRegex(weights.WeightsError, "b.npz: 20 bytes"):
      weights.check_sizes(paths, max_total=100, max_file=19)
    with self.assertRaisesRegex(weights.WeightsError, "total 30 bytes"):
      weights.check_sizes(paths, max_total=29, max_file=20)


class ShippedWeightsTest(absltest.TestCase):
  """Shapes, names and sizes of toprovar_jax/assets/emoji (not values)."""

  def test_embedded_emoji_is_packaged(self):
    self.assertIn("emoji", weights.embedded_names())
    self.assertTrue((weights.embedded_dir("emoji") / "README.md").is_file())

  def test_manifests_match_the_emoji_variant(self):
    directory = weights.embedded_dir("emoji")
    for name, abstract in (
        (weights.TRANSFORMER, pipeline.abstract_transformer(_EMOJI)),
        (weights.TOKENIZER, pipeline.abstract_tokenizer(_EMOJI, _EMOJI_TOK))):
      manifest = weights.read_manifest(directory, name)
      weights.check_shapes(weights._manifest_tree(manifest), abstract,
                           context=name)
      self.assertIsNotNone(weights.step_of(manifest))
      for path in weights.export_files(directory, name):
        self.assertTrue(path.is_file(), path)

  def test_within_the_shipping_limits(self):
    directory = weights.embedded_dir("emoji")
    files = sorted(p for p in directory.iterdir() if p.is_file())
    total = weights.check_sizes(files)
    self.assertLessEqual(total, 30 * 10**6)
    listed = {p.name for n in (weights.TRANSFORMER, weights.TOKENIZER)
              for p in weights.export_files(directory, n)}
    # Nothing ships that the manifests do not list, except the README.
    self.assertEqual({p.name for p in files} - listed, {"README.md"})

  def test_bad_embedded_name_is_refused(self):
    with self.assertRaisesRegex(weights.WeightsError, "embedded-weights"):
      weights.embedded_dir("../emoji")


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
    shipped = weights.embedded_dir("emoji")
    for name in (weights.TRANSFORMER, weights.TOKENIZER):
      for path in weights.export_files(shipped, name):
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
                                for p in weights.export_files(source, n)]))
    self.assertEqual((dest / "README.md").read_text(), "provenance")
    self.assertEqual(sorted(p.name for p in dest.parent.iterdir()), ["emoji"])

  def test_a_bad_export_leaves_the_target_untouched(self):
    source = self._source()
    path = weights.manifest_path(source, weights.TRANSFORMER)
    manifest = json.loads(path.read_text())
    path.unlink()  # a hard link: write a new file, not through the link
    manifest["leaves"]["stem/head/bias"]["shape"] = [1]
    path.write_text(json.dumps(manifest))
    dest = _tempdir(self) / "emoji"
    dest.mkdir()
    (dest / "README.md").write_text("old")
    (dest / "transformer_000.npz").write_bytes(b"old weights")
    with self.assertRaisesRegex(common.ConversionError, "stem/head/bias"):
      _ship(source, dest)
    self.assertEqual(sorted(p.name for p in dest.parent.iterdir()), ["emoji"])
    self.assertEqual((dest / "transformer_000.npz").read_bytes(),
                     b"old weights")


if __name__ == "__main__":
  absltest.main()
