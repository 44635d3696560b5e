"""Orbax params checkpoints: round trip and strict restore.

Parameter values come from numpy filled into the tiny models' abstract trees
(`jax.eval_shape`), so these tests never compile an init.
"""

import os

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from tests.weights import fake_trees
from toprovar_jax.weights import checkpoints


class RoundTripTest(absltest.TestCase):

  def test_var_tiny_params_round_trip_exactly(self):
    abstract, _ = fake_trees.abstract("var_tiny")
    params = fake_trees.fill(abstract)
    path = os.path.join(fake_trees.tempdir(self), "transformer")
    checkpoints.save_params(path, params)
    restored = checkpoints.restore_params(path, abstract)
    self.assertEqual(jax.tree.structure(restored), jax.tree.structure(params))
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(params)):
      self.assertIsInstance(got, jax.Array)
      self.assertEqual(got.dtype, want.dtype)
      np.testing.assert_array_equal(np.asarray(got), want)

  def test_restore_casts_to_the_model_dtype(self):
    abstract = {"w": jax.ShapeDtypeStruct((2, 3), jnp.float32)}
    path = os.path.join(fake_trees.tempdir(self), "bf16")
    checkpoints.save_params(path, {"w": jnp.ones((2, 3), jnp.bfloat16)})
    self.assertEqual(checkpoints.restore_params(path, abstract)["w"].dtype,
                     jnp.float32)

  def test_save_refuses_an_existing_checkpoint(self):
    path = os.path.join(fake_trees.tempdir(self), "ckpt")
    tree = {"w": np.zeros((2,), np.float32)}
    checkpoints.save_params(path, tree)
    with self.assertRaisesRegex(FileExistsError, "already exists"):
      checkpoints.save_params(path, tree)
    checkpoints.save_params(path, {"w": np.ones((2,), np.float32)},
                            overwrite=True)
    restored = checkpoints.restore_params(
        path, {"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
    np.testing.assert_array_equal(restored["w"], [1.0, 1.0])


class StrictRestoreTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.abstract, _ = fake_trees.abstract("var_tiny")
    self.root = fake_trees.tempdir(self)

  def _save(self, tree):
    path = os.path.join(self.root, "ckpt")
    checkpoints.save_params(path, tree)
    return path

  def test_missing_leaf_is_named(self):
    path = self._save(fake_trees.drop(fake_trees.fill(self.abstract),
                                      "stem/head/bias"))
    with self.assertRaisesRegex(checkpoints.ConversionError,
                                r"missing keys \(1\): stem/head/bias"):
      checkpoints.restore_params(path, self.abstract, context="var_tiny")

  def test_wrong_shape_is_named_with_both_shapes(self):
    params = fake_trees.fill(self.abstract)
    head = params["stem"]["head"]["bias"]
    params["stem"]["head"]["bias"] = np.zeros((head.shape[0] + 1,), head.dtype)
    path = self._save(params)
    with self.assertRaisesRegex(
        checkpoints.ConversionError,
        r"mis-shaped keys \(1\): stem/head/bias \(got \(257,\), "
        r"expected \(256,\)\)"):
      checkpoints.restore_params(path, self.abstract)

  def test_extra_leaf_is_named(self):
    params = fake_trees.fill(self.abstract)
    params["stem"]["stray"] = np.zeros((3,), np.float32)
    path = self._save(params)
    with self.assertRaisesRegex(checkpoints.ConversionError,
                                r"unexpected keys \(1\): stem/stray"):
      checkpoints.restore_params(path, self.abstract)

  def test_missing_checkpoint(self):
    with self.assertRaisesRegex(FileNotFoundError, "does not exist"):
      checkpoints.restore_params(os.path.join(self.root, "nope"),
                                 self.abstract)
    with self.assertRaisesRegex(FileNotFoundError, "no orbax tree metadata"):
      checkpoints.restore_params(self.root, self.abstract)


if __name__ == "__main__":
  absltest.main()
