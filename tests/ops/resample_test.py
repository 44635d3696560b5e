"""Parity of `toprovar_jax.ops.resample` with torch.nn.functional.

Every scale pair used by VAR (256 and 512) and Infinity (1M template and its
16 x 16 budget), plus non-square and arbitrary sizes, on random tensors.
Torch is a test dependency; arrays go NHWC -> NCHW for torch and back.

Worst max-abs errors against torch 2.13 CPU (x86-64, AVX2) on this file's
N(0, 1) inputs: bicubic 4.8e-7, bilinear 4.8e-7, area 2.4e-7; nearest and
pixel (un)shuffle are exact. A larger run (8 x 32 samples per pair) reached
bicubic 9.5e-7, bilinear 7.2e-7, area 3.0e-7: one or two float32 ulps of
outputs near |4|, from XLA's dot summing in another order than torch's FMA
chain. The weight matrices themselves are bit-identical to torch's for every
in, out in [1, 69] in all three modes (WeightMatrixTest checks a subset).

Dimension letters: B batch, H/W input size, h/w output size, C channels.
"""

import itertools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from toprovar_jax.models import config
from toprovar_jax.ops import resample

_ATOL = 1e-6
_VAR_256 = config.VAR_PATCH_NUMS_256
_VAR_512 = config.VAR_PATCH_NUMS_512
_INF_1M = config.INFINITY_1M_SIDES
# The 0.06M budget: the first 7 scales, final grid 16 x 16.
_INF_16 = _INF_1M[:7]
# Arbitrary sizes, non-square and in both directions on one call.
_ODD_PAIRS = (((7, 5), (3, 11)), ((5, 7), (13, 4)), ((3, 11), (7, 5)),
              ((1, 9), (6, 1)), ((17, 13), (17, 13)), ((64, 40), (37, 100)))


def _resize_torch(x_nhwc, size, mode):
  """torch F.interpolate on an NHWC numpy array; returns NHWC numpy."""
  x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
  kwargs = {} if mode == "area" else {"align_corners": False}
  y = F.interpolate(x, size=size, mode=mode, **kwargs)
  return y.numpy().transpose(0, 2, 3, 1)


def _random(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _up_pairs(sides, final):
  return [((p, p), (final, final)) for p in sides]


def _down_pairs(sides, final):
  """final x final down to every smaller scale (and to itself)."""
  return [((final, final), (p, p)) for p in sides]


_FNS = {
    "bicubic": resample.bicubic_resize,
    "bilinear": resample.bilinear_resize,
    "area": resample.area_resize,
}
# (mode, group name, pairs). Each group is one jit: XLA CPU compiles take
# most of this file's time, and one program per group is ~2x cheaper than
# one per shape.
_GROUPS = (
    ("bicubic", "var256_up", _up_pairs(_VAR_256, 16)),
    ("bicubic", "var512_up", _up_pairs(_VAR_512, 32)),
    ("bicubic", "odd", _ODD_PAIRS),
    ("area", "var256_down", _down_pairs(_VAR_256, 16)),
    ("area", "var512_down", _down_pairs(_VAR_512, 32)),
    ("area", "odd", _ODD_PAIRS),
    ("bilinear", "inf1m_up", _up_pairs(_INF_1M, 64)),
    ("bilinear", "inf16_up", _up_pairs(_INF_16, 16)),
    # The running sum at the final grid goes down to every next scale.
    ("bilinear", "inf1m_down", _down_pairs(_INF_1M[1:], 64)),
    ("bilinear", "inf16_down", _down_pairs(_INF_16[1:], 16)),
    ("bilinear", "odd", _ODD_PAIRS),
)


class ResizeParityTest(parameterized.TestCase):

  @parameterized.named_parameters(
      (f"{mode}_{name}", mode, pairs) for mode, name, pairs in _GROUPS)
  def test_matches_torch(self, mode, pairs):
    xs = [_random((2, *a, 3), seed=i) for i, (a, _) in enumerate(pairs)]
    sizes = [b for _, b in pairs]
    fn = _FNS[mode]
    got = jax.jit(lambda xs: [fn(x, b) for x, b in zip(xs, sizes)])(
        [jnp.asarray(x) for x in xs])
    for x, (a, b), y in zip(xs, pairs, got):
      with self.subTest(f"{a} -> {b}"):
        self.assertEqual(y.shape, (2, *b, 3))
        self.assertEqual(y.dtype, jnp.float32)
        np.testing.assert_allclose(np.asarray(y), _resize_torch(x, b, mode),
                                   rtol=0, atol=_ATOL)

  def test_bilinear_matches_torch_trilinear_with_one_frame(self):
    # Infinity's VAE calls trilinear on (B, C, 1, H, W); the time axis
    # resizes 1 -> 1, which must be the identity.
    for in_hw, out_hw in (((4, 6), (64, 64)), ((64, 64), (12, 12))):
      x = _random((1, *in_hw, 4))
      x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2)[:, :, None])
      want = F.interpolate(x_torch, size=(1, *out_hw), mode="trilinear",
                           align_corners=False)
      want = want[:, :, 0].numpy().transpose(0, 2, 3, 1)
      got = resample.bilinear_resize(jnp.asarray(x), out_hw)
      np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=_ATOL)


class WeightMatrixTest(parameterized.TestCase):
  """The weight matrices equal torch's bit for bit (x86-64 CPU torch)."""

  @parameterized.parameters("bicubic", "bilinear", "area")
  def test_bit_exact(self, mode):
    if (mode != "area" and
        torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512")):
      # Our weights replay the FMAs of torch's AVX2/AVX512 kernels; other
      # builds round differently (by ~1 ulp), which only the parity tests'
      # tolerance covers.
      self.skipTest("torch kernel without FMA contraction")
    build = {"bicubic": resample._bicubic_matrix,
             "bilinear": resample._bilinear_matrix,
             "area": resample._area_matrix}[mode]
    sizes = (1, 2, 3, 5, 7, 13, 16, 24, 40, 48, 64)
    kwargs = {} if mode == "area" else {"align_corners": False}
    for n_in, n_out in itertools.product(sizes, sizes):
      # Row k of a one-hot stack resized along H is column k of the matrix.
      eye = torch.eye(n_in).reshape(n_in, 1, n_in, 1)
      want = F.interpolate(eye, size=(n_out, 1), mode=mode, **kwargs)
      want = want[:, 0, :, 0].numpy().T
      np.testing.assert_array_equal(build(n_in, n_out), want,
                                    err_msg=f"{mode} {n_in} -> {n_out}")

  @parameterized.parameters(
      resample.bicubic_resize, resample.bilinear_resize, resample.area_resize)
  def test_same_size_is_identity(self, fn):
    x = _random((1, 5, 6, 2))
    np.testing.assert_array_equal(np.asarray(fn(jnp.asarray(x), (5, 6))), x)


class NearestTest(absltest.TestCase):

  def test_matches_torch(self):
    for hw in ((1, 1), (3, 5), (16, 16)):
      x = _random((2, *hw, 3))
      x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2))
      want = F.interpolate(x_torch, scale_factor=2, mode="nearest")
      got = resample.nearest_upsample2x(jnp.asarray(x))
      np.testing.assert_array_equal(np.asarray(got),
                                    want.numpy().transpose(0, 2, 3, 1))


class PixelShuffleTest(parameterized.TestCase):

  @parameterized.parameters((2, 3), (2, 32), (3, 2))
  def test_matches_torch(self, r, channels):
    x = _random((2, 4, 6, channels * r * r))
    x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2))
    want = F.pixel_shuffle(x_torch, r).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(resample.pixel_shuffle(jnp.asarray(x), r))
    np.testing.assert_array_equal(got, want)
    # And the inverse against torch's inverse.
    want_back = F.pixel_unshuffle(torch.from_numpy(
        want.transpose(0, 3, 1, 2).copy()), r).numpy().transpose(0, 2, 3, 1)
    back = np.asarray(resample.pixel_unshuffle(jnp.asarray(got), r))
    np.testing.assert_array_equal(back, want_back)
    np.testing.assert_array_equal(back, x)

  def test_channel_convention(self):
    # Channel c * r * r + i * r + j lands on sub-pixel (i, j), channel c.
    r, c = 2, 3
    x = jnp.arange(c * r * r, dtype=jnp.float32).reshape(1, 1, 1, c * r * r)
    y = resample.pixel_shuffle(x, r)
    for ch, i, j in itertools.product(range(c), range(r), range(r)):
      self.assertEqual(float(y[0, i, j, ch]), ch * r * r + i * r + j)

  def test_round_trip(self):
    x = jnp.asarray(_random((1, 8, 4, 7)))
    np.testing.assert_array_equal(
        resample.pixel_shuffle(resample.pixel_unshuffle(x, 2), 2), x)


class ValidationTest(parameterized.TestCase):

  @parameterized.parameters(
      resample.bicubic_resize, resample.bilinear_resize, resample.area_resize)
  def test_resize_rejects_bad_rank_and_size(self, fn):
    with self.assertRaisesRegex(ValueError, "x must be 4-D"):
      fn(jnp.zeros((4, 4, 3)), (2, 2))
    with self.assertRaisesRegex(ValueError, "size"):
      fn(jnp.zeros((1, 4, 4, 3)), (2, 0))
    with self.assertRaisesRegex(ValueError, "size"):
      fn(jnp.zeros((1, 4, 4, 3)), 2)

  def test_other_ops_reject_bad_input(self):
    with self.assertRaisesRegex(ValueError, "x must be 4-D"):
      resample.nearest_upsample2x(jnp.zeros((4, 4)))
    with self.assertRaisesRegex(ValueError, "x must be 4-D"):
      resample.pixel_shuffle(jnp.zeros((4, 4, 4)), 2)
    with self.assertRaisesRegex(ValueError, "divisible"):
      resample.pixel_shuffle(jnp.zeros((1, 2, 2, 6)), 2)
    with self.assertRaisesRegex(ValueError, "divisible"):
      resample.pixel_unshuffle(jnp.zeros((1, 3, 4, 1)), 2)


if __name__ == "__main__":
  absltest.main()
