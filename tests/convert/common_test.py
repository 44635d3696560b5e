"""State-dict bookkeeping of the converters: every key consumed, every
offender listed; torch -> flax layouts."""

from absl.testing import absltest
import numpy as np

from toprovar_jax.convert import common
from toprovar_jax.weights import strict


class StateDictTest(absltest.TestCase):

  def test_missing_mis_shaped_and_untaken_keys_are_all_listed(self):
    sd = common.StateDict({"a": np.ones((2, 3)), "b": np.ones(4),
                           "c": np.ones(1), "buf.zero_k_bias": np.ones(1)},
                          ignore=("zero_k_bias",), context="tiny")
    np.testing.assert_array_equal(sd.take("a", (2, 3)), np.ones((2, 3)))
    self.assertIsNone(sd.take("b", (5,)))  # mis-shaped
    self.assertIsNone(sd.take("z"))  # missing
    self.assertTrue(sd.has("c") and not sd.has("z"))
    with self.assertRaises(strict.ConversionError) as ctx:
      sd.finish()
    err = ctx.exception
    self.assertEqual((err.missing, err.unexpected, err.mismatched),
                     (["z"], ["c"], [("b", (4,), (5,))]))
    self.assertIn("(tiny)", str(err))

  def test_a_fully_consumed_dict_finishes(self):
    sd = common.StateDict({"a": np.ones(2, np.float64)})
    self.assertEqual(sd.take("a").dtype, np.float32)
    sd.finish()


class LayoutTest(absltest.TestCase):

  def test_linear_and_conv_transposes(self):
    w = np.arange(6.0).reshape(2, 3)  # torch (out, in)
    np.testing.assert_array_equal(common.linear(w), w.T)
    c = np.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)  # (O, I, kh, kw)
    got = common.conv2d(c)
    self.assertEqual(got.shape, (4, 5, 3, 2))
    self.assertEqual(got[1, 2, 0, 1], c[1, 0, 1, 2])
    self.assertIsNone(common.linear(None))
    self.assertIsNone(common.conv2d(None))

  def test_strip_prefix(self):
    self.assertEqual(common.strip_prefix({"var/a": 1, "vae/b": 2, "var/c": 3},
                                         "var/"), {"a": 1, "c": 3})


if __name__ == "__main__":
  absltest.main()
