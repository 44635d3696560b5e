"""The strict tree check: every missing, unexpected and mis-shaped leaf is
listed at once."""

from absl.testing import absltest
import jax
import numpy as np

from toprovar_jax.weights import strict


class StrictTest(absltest.TestCase):

  def test_flatten(self):
    self.assertEqual(strict.flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}),
                     {"a/b": 1, "a/c/d": 2, "e": 3})

  def test_every_offender_is_listed(self):
    want = {"w": jax.ShapeDtypeStruct((2, 3), np.float32),
            "blk": {"b": jax.ShapeDtypeStruct((3,), np.float32),
                    "k": jax.ShapeDtypeStruct((4,), np.float32)}}
    got = {"w": np.zeros((3, 2)), "blk": {"b": np.zeros(3)},
           "extra": np.zeros(1)}
    with self.assertRaises(strict.ConversionError) as ctx:
      strict.check_against(got, want, context="var_tiny")
    err = ctx.exception
    self.assertIsInstance(err, ValueError)
    self.assertEqual(err.missing, ["blk/k"])
    self.assertEqual(err.unexpected, ["extra"])
    self.assertEqual(err.mismatched, [("w", (3, 2), (2, 3))])
    self.assertIn("(var_tiny)", str(err))
    self.assertIn("w (got (3, 2), expected (2, 3))", str(err))

  def test_a_matching_tree_passes(self):
    want = {"w": jax.ShapeDtypeStruct((2,), np.float32)}
    strict.check_against({"w": np.ones(2)}, want)


if __name__ == "__main__":
  absltest.main()
