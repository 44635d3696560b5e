"""The npz-shard format: its writer and its reader (`weights.shards`).

The round trips check the values read against the tree written; the
shipped weights are tests/weights/embedded_test.py's, what they draw
tests/experiments/emoji_main_test.py's.
"""

import json
import os
import pathlib
import shutil
import tempfile

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from toprovar_jax.weights import shards
from toprovar_jax.weights import strict

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
  """What write_shards keeps of a leaf: floats rounded to bf16."""
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
  shards.write_shards(directory, _tree(), name=name, step=7,
                      max_bytes=_MAX_BYTES)
  return directory


class WriterTest(absltest.TestCase):

  def test_split_into_small_files_and_round_trip(self):
    root = _tempdir(self)
    rng = np.random.default_rng(0)
    tree = {"params": {"big": rng.normal(size=(300, 100)).astype(np.float32),
                       "small": {"bias": np.ones(7, np.float32)}},
            "count": np.arange(3, dtype=np.int32)}
    max_bytes = 24 * 1024
    # A stale shard from an earlier, larger export must go.
    (root / "p_009.npz").write_bytes(b"old")
    paths = shards.write_shards(root, tree, name="p", step=5,
                                max_bytes=max_bytes)
    files = [p for p in paths if p.suffix == ".npz"]
    self.assertGreater(len(files), 2)  # 60 kB of bf16 in <= 24 kB files
    for p in files:
      self.assertLessEqual(os.path.getsize(p), max_bytes)
    self.assertFalse((root / "p_009.npz").exists())
    got, manifest = shards.load_shards(root, "p", dtype=np.float32)
    self.assertEqual(manifest["num_params"], 300 * 100 + 7 + 3)
    np.testing.assert_array_equal(
        got["params"]["big"],
        tree["params"]["big"].astype(ml_dtypes.bfloat16).astype(np.float32))
    np.testing.assert_array_equal(got["params"]["small"]["bias"], 1.0)
    self.assertEqual(got["count"].dtype, np.int32)  # ints are not cast
    np.testing.assert_array_equal(got["count"], [0, 1, 2])


class RoundTripTest(absltest.TestCase):

  def test_reads_what_training_exports(self):
    directory = _export(self)
    got, manifest = shards.load_shards(directory, "params")
    self.assertEqual(manifest, json.loads(
        (directory / "params.manifest.json").read_text()))
    self.assertEqual(shards.step_of(manifest), 7)
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
    got, _ = shards.load_shards(directory, "params", dtype=np.float32)
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
    params, manifest = shards.load_params(directory, "params", abstract)
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
    with self.assertRaisesRegex(strict.ConversionError,
                                r"params/conv/kernel \(got \(3, 3, 4, 8\)"):
      shards.load_params(directory, "params", abstract, context="ctx")

  def test_missing_and_unexpected_leaves_are_listed(self):
    directory = _export(self)
    abstract = _abstract(_tree())
    del abstract["count"]
    abstract["params"]["extra"] = jax.ShapeDtypeStruct((2,), jnp.float32)
    with self.assertRaisesRegex(strict.ConversionError,
                                r"missing keys.*params/extra(.|\n)*"
                                r"unexpected keys.*count"):
      shards.load_params(directory, "params", abstract)

  def test_int_leaf_where_model_wants_float_is_named(self):
    directory = _export(self)
    abstract = _abstract(_tree())
    abstract["count"] = jax.ShapeDtypeStruct((5,), jnp.float32)
    with self.assertRaisesRegex(shards.WeightsError, "leaf 'count' is int32"):
      shards.load_params(directory, "params", abstract)

  def test_missing_shard_names_the_file(self):
    directory = _export(self)
    (directory / "params_001.npz").unlink()
    with self.assertRaisesRegex(FileNotFoundError, "params_001.npz"):
      shards.load_shards(directory, "params")

  def test_corrupt_shard_names_the_file(self):
    directory = _export(self)
    (directory / "params_000.npz").write_bytes(b"not a zip")
    with self.assertRaisesRegex(shards.WeightsError, "params_000.npz"):
      shards.load_shards(directory, "params")

  def test_bad_crc_or_pickled_member_names_file_and_member(self):
    directory = _export(self)
    manifest = shards.read_manifest(directory, "params")
    key, leaf = sorted(manifest["leaves"].items())[0]
    part = leaf["parts"][0]
    path = directory / part["file"]
    data = bytearray(path.read_bytes())
    raw = np.load(path)[part["entry"]].tobytes()
    at = bytes(data).index(raw[:16]) + len(raw) // 2
    data[at] ^= 0xFF  # one byte of the member's data: its CRC no longer fits
    path.write_bytes(bytes(data))
    with self.assertRaisesRegex(
        shards.WeightsError,
        f"{path}: member '{part['entry']}' \\(leaf '{key}'\\) is not a "
        "readable array \\(BadZipFile: Bad CRC-32"):
      shards.load_shards(directory, "params")
    # A member holding a pickled object (np.load refuses pickles).
    with np.load(_export(self) / part["file"]) as z:  # an intact copy
      members = {k: z[k] for k in z.files}
    members[part["entry"]] = np.array([{"a": 1}], dtype=object)
    np.savez(path, **members)
    with self.assertRaisesRegex(
        shards.WeightsError,
        f"member '{part['entry']}' \\(leaf '{key}'\\) is not a readable "
        "array \\(ValueError: Object arrays cannot be loaded"):
      shards.load_shards(directory, "params")

  def test_missing_manifest_names_the_file(self):
    with self.assertRaisesRegex(FileNotFoundError, "nope.manifest.json"):
      shards.load_shards(_tempdir(self), "nope")

  def test_shard_outside_the_folder_is_refused(self):
    directory = _export(self)
    path = shards.manifest_path(directory, "params")
    manifest = json.loads(path.read_text())
    manifest["leaves"]["count"]["parts"][0]["file"] = "../evil.npz"
    path.write_text(json.dumps(manifest))
    with self.assertRaisesRegex(shards.WeightsError,
                                "leaf 'count'.*bare .npz"):
      shards.load_shards(directory, "params")

  def test_manifest_shape_that_disagrees_with_the_data_names_the_leaf(self):
    directory = _export(self)
    path = shards.manifest_path(directory, "params")
    manifest = json.loads(path.read_text())
    manifest["leaves"]["count"]["shape"] = [6]
    path.write_text(json.dumps(manifest))
    with self.assertRaisesRegex(shards.WeightsError, "leaf 'count'"):
      shards.load_shards(directory, "params")

  def test_unknown_format_is_refused(self):
    directory = _export(self)
    path = shards.manifest_path(directory, "params")
    manifest = json.loads(path.read_text())
    manifest["format"] = "pickle"
    path.write_text(json.dumps(manifest))
    with self.assertRaisesRegex(shards.WeightsError, "format 'pickle'"):
      shards.load_shards(directory, "params")


if __name__ == "__main__":
  absltest.main()
