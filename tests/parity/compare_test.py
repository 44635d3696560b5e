"""`parity.compare`: shapes before values, non-finite values fail and stay
strict JSON, near-ties are skipped but a comparison of nothing fails."""

import json
import math

from absl.testing import absltest
import numpy as np

from toprovar_jax.parity import compare


def _strict(check):
  """The check through a strict JSON round trip (no NaN / Infinity)."""
  def refuse(constant):
    raise ValueError(f"non-standard JSON constant {constant}")
  return json.loads(json.dumps(check, allow_nan=False),
                    parse_constant=refuse)


class CloseTest(absltest.TestCase):

  def test_within_and_beyond_the_tolerance(self):
    ref = np.zeros((2, 3), np.float32)
    ok = compare.close(ref + 1e-5, ref, 1e-4, against="x")
    self.assertTrue(ok["pass"])
    self.assertAlmostEqual(ok["max_abs_err"], 1e-5, places=9)
    self.assertEqual(ok["against"], "x")
    self.assertFalse(compare.close(ref + 2e-4, ref, 1e-4)["pass"])

  def test_shapes_are_compared_before_values(self):
    # (2, 3) against (3,) would broadcast to an error of 0.
    check = compare.close(np.zeros((2, 3)), np.zeros(3), 1e-4)
    self.assertEqual(_strict(check), {"shape": [[2, 3], [3]], "pass": False,
                                      "tol": 1e-4})
    check = compare.exact(np.zeros((1, 4), int), np.zeros(4, int))
    self.assertEqual(check["shape"], [[1, 4], [4]])
    self.assertFalse(check["pass"])
    self.assertNotIn("mismatches", check)
    check = compare.argmax_check(np.zeros((2, 4)), np.zeros((2, 1, 4)), False)
    self.assertEqual(check["shape"], [[2, 4], [2, 1, 4]])

  def test_non_finite_values_fail_as_strict_json(self):
    ours = np.zeros((2, 3), np.float32)
    ref = ours.copy()
    ref[0, 0], ref[1, 2] = np.nan, -np.inf
    ours[1, 1] = np.inf
    check = _strict(compare.close(ours, ref, 1e-4))
    self.assertEqual(check, {"max_abs_err": None, "pass": False, "tol": 1e-4,
                             "non_finite": {"ours": 1, "reference": 2}})
    check = _strict(compare.exact(ours, ref))
    self.assertFalse(check["pass"])
    self.assertEqual(check["mismatches"], 3)
    self.assertIsNone(check["max_abs_err"])
    self.assertEqual(check["non_finite"], {"ours": 1, "reference": 2})
    # NaN == NaN is false, so equal non-finite arrays still fail.
    self.assertFalse(compare.exact(ref, ref)["pass"])

  def test_close_real_judges_real_positions_only(self):
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    ref = np.zeros((2, 3, 4), np.float32)
    ours = ref.copy()
    ours[0, 2] = np.nan  # a padded position
    ours[1, 1] = 0.5
    check = _strict(compare.close_real(ours, ref, mask, 1e-4))
    self.assertTrue(check["pass"])
    self.assertEqual(check["max_abs_err"], 0.0)
    self.assertIsNone(check["max_abs_err_padded_info"])
    self.assertNotIn("max_abs_err_padded_info", compare.close_real(
        ours, ref, mask, 1e-4, padded_info=False))
    ours[1, 0, 3] = 1.0  # a real position
    self.assertEqual(compare.close_real(ours, ref, mask, 1e-4)["max_abs_err"],
                     1.0)
    # (..., B, L, C) with the blocks first: the mask applies to B, L.
    stacked = compare.close_real(np.stack([ref, ref]), np.stack([ref, ref]),
                                 mask, 1e-4)
    self.assertTrue(stacked["pass"])
    check = compare.close_real(ref, ref, mask[:, :2], 1e-4)
    self.assertEqual(check["mask_shape"], [2, 2])
    self.assertFalse(check["pass"])


class ArgmaxTest(absltest.TestCase):

  def test_near_ties_are_skipped(self):
    ref = np.array([[0.0, 1.0, 0.5], [1.0, 1.0 + 1e-5, 0.0]])
    ours = np.array([[0.0, 2.0, 0.0], [2.0, 0.0, 0.0]])
    check = compare.argmax_check(ours, ref, pairs=False)
    self.assertEqual((check["mismatches"], check["compared"],
                      check["skipped_near_ties"]), (0, 1, 1))
    self.assertTrue(check["pass"])
    ours[0] = [1.0, 0.0, 0.0]
    self.assertEqual(compare.argmax_check(ours, ref, False)["mismatches"], 1)

  def test_bit_pairs(self):
    # Logit index 2k + b is "bit k = b": bits (1, 0) against (1, 1).
    ref = np.array([[0.0, 1.0, 1.0, 0.0]])
    check = compare.argmax_check(np.array([[0.0, 1.0, 0.0, 1.0]]), ref, True)
    self.assertEqual((check["mismatches"], check["compared"]), (1, 2))

  def test_nothing_compared_or_non_finite_fails(self):
    ties = np.ones((3, 4))
    check = compare.argmax_check(ties, ties, pairs=False)
    self.assertEqual(check["compared"], 0)
    self.assertFalse(check["pass"])
    ref = np.eye(3)
    ref[0, 0] = np.nan
    check = _strict(compare.argmax_check(np.eye(3), ref, pairs=False))
    self.assertFalse(check["pass"])
    self.assertEqual(check["non_finite"], {"ours": 0, "reference": 1})


class HelpersTest(absltest.TestCase):

  def test_finite_json(self):
    tree = {"a": [1.0, math.nan], "b": {"c": -math.inf, "d": "x"}, "e": 2}
    self.assertEqual(_strict(compare.finite_json(tree)),
                     {"a": [1.0, None], "b": {"c": None, "d": "x"}, "e": 2})

  def test_param_check_and_count(self):
    tree = {"w": np.zeros((2, 3)), "b": [np.zeros(4)]}
    self.assertEqual(compare.count(tree), 10)
    self.assertTrue(compare.param_check(10, 10)["pass"])
    self.assertFalse(compare.param_check(10, 11)["pass"])

  def test_layouts_round_trip(self):
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)  # NCHW
    np.testing.assert_array_equal(compare.nchw(compare.nhwc(x)), x)
    self.assertEqual(compare.nhwc(x).shape, (1, 3, 4, 2))


if __name__ == "__main__":
  absltest.main()
