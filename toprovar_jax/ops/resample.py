"""PyTorch-exact image and latent resampling in NHWC.

`jax.image.resize` uses different sampling rules from `torch.nn.functional.
interpolate` (for example, it antialiases when downsampling, and its cubic
kernel has a = -0.5), so the VAR and Infinity tokenizers cannot use it: their
multi-scale residual loops are only correct if every up and down sample equals
the official PyTorch one. Here each resize is separable: a static (out, in)
matrix for rows and one for columns. The matrices are built once in numpy at
trace time (all shapes are static) and applied with two full-precision
einsums, so they are constants inside jit.

The weights are computed the way torch's CPU kernels compute them: in float32,
with the fused multiply-adds that the compiler contracts in its vectorized
(AVX2) build. All three matrices are then bit-identical to torch 2.13's for
every in, out in [1, 69] (measured). Computing them in float64 instead is off
by up to 3e-6 (for example, bilinear 64 -> 48), and plain unfused float32 by
up to 1e-6, against a 1e-6 parity tolerance. The outputs still differ from
torch by an ulp or two, because XLA's dot sums the taps in another order.

Dimension letters:
  B batch, H input height, W input width, C channels,
  h output height, w output width, r pixel-shuffle factor.
  (H is height here, not the number of attention heads.)
"""

from __future__ import annotations

import functools
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

Size = Tuple[int, int]

# Keys' cubic convolution parameter used by torch's bicubic mode.
_CUBIC_A = np.float32(-0.75)


def _fma32(a, b, c) -> np.ndarray:
  """Returns a * b + c in float32 with a single rounding, like a CPU FMA.

  The float32 product a * b is exact in float64; adding c can round there,
  but a double rounding that changes the float32 result needs the float64 sum
  to fall exactly on a float32 tie, which we accept as negligible.
  """
  a64 = np.asarray(a, np.float64)
  return (a64 * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(
      np.float32)


def _source_coords(n_in: int, n_out: int) -> np.ndarray:
  """Torch's `area_pixel_compute_source_index` (align_corners=False).

  Args:
    n_in: input length along the axis.
    n_out: output length along the axis.

  Returns:
    (n_out,) float32 source coordinates (dst + 0.5) * in / out - 0.5, not yet
    clamped. The scale is a float32 division and the rest one fused
    multiply-add, as torch's compiled kernels compute it; the unfused form is
    one ulp off for some sizes, which moves the weights by up to 5e-7.
  """
  scale = np.float32(n_in) / np.float32(n_out)
  dst = np.arange(n_out, dtype=np.float32) + np.float32(0.5)
  return _fma32(scale, dst, np.float32(-0.5))


def _floor_and_frac(src: np.ndarray, n_in: int):
  """Torch's `guard_index_and_lambda`: integer part and fraction in [0, 1].

  Args:
    src: (n_out,) float32 source coordinates.
    n_in: input length; the index is capped at n_in - 1.

  Returns:
    (index, frac): (n_out,) int64 and (n_out,) float32.
  """
  index = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  frac = np.clip(src - index.astype(np.float32), 0, 1).astype(np.float32)
  return index, frac


def _scatter_taps(n_in: int, index: np.ndarray, weights) -> np.ndarray:
  """Builds an (n_out, n_in) matrix from per-output taps.

  Args:
    n_in: input length.
    index: (n_out, K) int64 input index of each tap, already clamped.
    weights: (n_out, K) float32 weight of each tap.

  Returns:
    (n_out, n_in) float32 matrix, read-only (it is shared through the caches).
    Taps that clamp onto the same input add up in tap order, in float32, as
    torch's kernel adds their products.
  """
  n_out, num_taps = index.shape
  matrix = np.zeros((n_out, n_in), np.float32)
  rows = np.arange(n_out)
  for k in range(num_taps):
    # Column by column so duplicate indices accumulate (fancy-index `+=` would
    # keep only the last write) and in torch's left-to-right order.
    matrix[rows, index[:, k]] += weights[:, k]
  matrix.setflags(write=False)
  return matrix


@functools.lru_cache(maxsize=None)
def _bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of torch bicubic, align_corners=False, a = -0.75."""
  # Bicubic keeps negative source coordinates (only the tap indices clamp).
  index, t = _floor_and_frac(_source_coords(n_in, n_out), n_in)
  one = np.float32(1)
  a = _CUBIC_A

  # Torch's cubic_convolution1/2 as its compiled kernel evaluates them: all
  # but the last multiply-add fused (measured bit-exact against torch 2.13).
  def near(x):  # |x| <= 1: ((a + 2) x - (a + 3)) x x + 1
    p = _fma32(a + 2, x, -(a + 3))
    return (p * x) * x + one

  def far(x):  # 1 < |x| < 2: ((a x - 5a) x + 8a) x - 4a
    p = _fma32(_fma32(a, x, -5 * a), x, 8 * a)
    return p * x - 4 * a

  weights = np.stack([far(t + one), near(t), near(one - t),
                      far((one - t) + one)], axis=1)
  taps = index[:, None] + np.arange(-1, 3)[None, :]
  return _scatter_taps(n_in, np.clip(taps, 0, n_in - 1), weights)


@functools.lru_cache(maxsize=None)
def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of torch bilinear, align_corners=False."""
  # Linear modes clamp negative source coordinates to 0 (cubic does not).
  src = np.maximum(_source_coords(n_in, n_out), np.float32(0))
  index0, lambda1 = _floor_and_frac(src, n_in)
  index1 = np.minimum(index0 + 1, n_in - 1)
  lambda0 = np.float32(1) - lambda1
  return _scatter_taps(n_in, np.stack([index0, index1], axis=1),
                       np.stack([lambda0, lambda1], axis=1))


@functools.lru_cache(maxsize=None)
def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of torch adaptive average pooling (mode='area').

  Output i averages inputs [floor(i * in / out), ceil((i + 1) * in / out));
  windows overlap when in is not a multiple of out, and an output repeats
  inputs when upsampling.
  """
  i = np.arange(n_out, dtype=np.int64)
  # Integer arithmetic, exactly as torch's start_index / end_index.
  start = (i * n_in) // n_out
  end = ((i + 1) * n_in + n_out - 1) // n_out
  cols = np.arange(n_in, dtype=np.int64)[None, :]
  inside = (cols >= start[:, None]) & (cols < end[:, None])
  # Torch divides the window sum by the count; a reciprocal weight differs by
  # at most one rounding, well inside the parity tolerance.
  counts = (end - start).astype(np.float32)
  matrix = np.where(inside, np.float32(1) / counts[:, None], np.float32(0))
  matrix = matrix.astype(np.float32)
  matrix.setflags(write=False)
  return matrix


def _check_nhwc(x: jax.Array, name: str = "x") -> None:
  if x.ndim != 4:
    raise ValueError(
        f"{name} must be 4-D NHWC (B, H, W, C); got shape {tuple(x.shape)}.")


def _check_size(size) -> Size:
  """Returns `size` as an (h, w) tuple of positive Python ints."""
  if (not isinstance(size, (tuple, list)) or len(size) != 2 or
      not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool)
              for s in size) or min(size) < 1):
    raise ValueError(
        f"size must be an (h, w) pair of positive Python ints; got {size!r}.")
  return int(size[0]), int(size[1])


def _separable_resize(x: jax.Array, size, matrix_fn) -> jax.Array:
  """Applies `matrix_fn(in, out)` along W then H.

  Args:
    x: (B, H, W, C) floating array.
    size: (h, w) output size.
    matrix_fn: cached builder of the (out, in) float32 weight matrix.

  Returns:
    (B, h, w, C) array of x's dtype, computed in float32.
  """
  _check_nhwc(x)
  out_h, out_w = _check_size(size)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"x must be a floating array; got {x.dtype}.")
  _, in_h, in_w, _ = x.shape
  y = x.astype(jnp.float32)
  highest = jax.lax.Precision.HIGHEST
  # Columns first, then rows, as torch nests the W taps inside the H taps:
  # measured, ~35% instead of ~53% of bicubic outputs differ from torch by an
  # ulp or two (the worst case, 2 ulp, is the same in both orders).
  # Equal sizes give exact identity matrices in every mode; skipping the
  # product keeps those axes bit-exact and saves the work.
  if in_w != out_w:
    y = jnp.einsum("wW,BHWC->BHwC", matrix_fn(in_w, out_w), y,
                   precision=highest)
  if in_h != out_h:
    y = jnp.einsum("hH,BHwC->BhwC", matrix_fn(in_h, out_h), y,
                   precision=highest)
  return y.astype(x.dtype)


def bicubic_resize(x: jax.Array, size: Size) -> jax.Array:
  """torch `F.interpolate(mode='bicubic', align_corners=False)`, NHWC.

  No antialiasing. Source coordinate (dst + 0.5) * in / out - 0.5, cubic
  convolution with a = -0.75 over 4 taps whose indices clamp to [0, in - 1]
  (the coordinate itself is not clamped). Used by VAR to upsample p x p code
  maps to the final grid.

  Args:
    x: (B, H, W, C) floating array.
    size: (h, w) output size, Python ints.

  Returns:
    (B, h, w, C) array of x's dtype.
  """
  return _separable_resize(x, size, _bicubic_matrix)


def area_resize(x: jax.Array, size: Size) -> jax.Array:
  """torch `F.interpolate(mode='area')` == `adaptive_avg_pool2d`, NHWC.

  Output row i averages input rows [floor(i * H / h), ceil((i + 1) * H / h)),
  likewise for columns. Used by VAR to downsample the residual to each scale.

  Args:
    x: (B, H, W, C) floating array.
    size: (h, w) output size, Python ints.

  Returns:
    (B, h, w, C) array of x's dtype.
  """
  return _separable_resize(x, size, _area_matrix)


def bilinear_resize(x: jax.Array, size: Size) -> jax.Array:
  """torch `F.interpolate(mode='bilinear', align_corners=False)`, NHWC.

  Also equals mode='trilinear' on a (B, C, 1, H, W) tensor resized to
  (1, h, w). No antialiasing, even when downsampling: each output reads only
  its two nearest inputs per axis. Source coordinate (dst + 0.5) * in / out -
  0.5, negative values clamped to 0, upper neighbour clamped to in - 1. Used
  by Infinity to upsample codes to the final grid and to downsample the
  running sum to the next scale.

  Args:
    x: (B, H, W, C) floating array.
    size: (h, w) output size, Python ints.

  Returns:
    (B, h, w, C) array of x's dtype.
  """
  return _separable_resize(x, size, _bilinear_matrix)


def nearest_upsample2x(x: jax.Array) -> jax.Array:
  """torch `F.interpolate(mode='nearest', scale_factor=2)`, NHWC.

  Output (i, j) copies input (i // 2, j // 2).

  Args:
    x: (B, H, W, C) array of any dtype.

  Returns:
    (B, 2H, 2W, C) array.
  """
  _check_nhwc(x)
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _check_factor(r) -> int:
  if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
    raise ValueError(f"r must be a positive Python int; got {r!r}.")
  return int(r)


def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
  """torch `F.pixel_shuffle` with torch's channel order, in NHWC.

  Input channel c * r * r + i * r + j of pixel (y, x) goes to output pixel
  (y * r + i, x * r + j), channel c.

  Args:
    x: (B, H, W, C * r * r) array.
    r: upscale factor.

  Returns:
    (B, H * r, W * r, C) array.
  """
  _check_nhwc(x)
  r = _check_factor(r)
  b, h, w, c_in = x.shape
  if c_in % (r * r):
    raise ValueError(
        f"x's channel count {c_in} is not divisible by r * r = {r * r}.")
  c = c_in // (r * r)
  y = x.reshape(b, h, w, c, r, r)  # (B, H, W, C, i, j)
  y = y.transpose(0, 1, 4, 2, 5, 3)  # (B, H, i, W, j, C)
  return y.reshape(b, h * r, w * r, c)


def pixel_unshuffle(x: jax.Array, r: int) -> jax.Array:
  """torch `F.pixel_unshuffle` with torch's channel order, in NHWC.

  The inverse of `pixel_shuffle`: pixel (y * r + i, x * r + j), channel c goes
  to pixel (y, x), channel c * r * r + i * r + j.

  Args:
    x: (B, H * r, W * r, C) array.
    r: downscale factor.

  Returns:
    (B, H, W, C * r * r) array.
  """
  _check_nhwc(x)
  r = _check_factor(r)
  b, hr, wr, c = x.shape
  if hr % r or wr % r:
    raise ValueError(
        f"x's spatial shape {(hr, wr)} is not divisible by r = {r}.")
  h, w = hr // r, wr // r
  y = x.reshape(b, h, r, w, r, c)  # (B, H, i, W, j, C)
  y = y.transpose(0, 1, 3, 5, 2, 4)  # (B, H, W, C, i, j)
  return y.reshape(b, h, w, c * r * r)
