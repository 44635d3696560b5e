"""Pixel-level image metrics: PSNR and SSIM, and agreement of two runs.

The one definition of PSNR and SSIM in the package (tokenizer evaluation,
plan comparisons). Pure functions of arrays; they judge images and never
run a model.

  psnr_from_mse     10 log10(range² / MSE), numpy or jnp
  psnr, ssim        per image, jnp, (B, H, W, C) in one unit range
  image_similarity  uint8 images against same-seed reference images

Dimension letters: B (or N) images, H, W height and width, C channels.
"""

from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def psnr_from_mse(mse, *, data_range, xp: Any = np):
  """Peak signal-to-noise ratio in dB of a mean squared error.

  Args:
    mse: mean squared error(s), in the units of `data_range`.
    data_range: peak-to-peak range of the images (255 for uint8, 1 for
      [0, 1], 2 for [-1, 1]).
    xp: the array module, numpy (float64 on the host) or jax.numpy (inside
      jit).

  Returns:
    10 log10(data_range² / mse); +inf where mse is 0 (numpy warns).
  """
  return 10.0 * xp.log10(data_range ** 2 / mse)


def psnr(x: Array, y: Array, *, data_range: float = 1.0) -> Array:
  """Peak signal-to-noise ratio per image, in dB.

  Args:
    x, y: (B, H, W, C) images in the same units.
    data_range: peak-to-peak range (1 for [0, 1], 2 for [-1, 1]).

  Returns:
    (B,) float32; +inf for identical images.
  """
  mse = jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)),
                 axis=(1, 2, 3))
  return psnr_from_mse(mse, data_range=jnp.float32(data_range), xp=jnp)


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  g = np.exp(-0.5 * (x / sigma) ** 2)
  return (g / g.sum()).astype(np.float32)


def _filter_valid(x: Array, taps: np.ndarray) -> Array:
  """Separable 'valid' filtering of (B, H, W, C) over H and W."""
  k = len(taps)
  h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
  x = sum(float(t) * x[:, i:i + h] for i, t in enumerate(taps))
  return sum(float(t) * x[:, :, i:i + w] for i, t in enumerate(taps))


def ssim(x: Array, y: Array, *, data_range: float = 1.0,
         filter_size: int = 11, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03) -> Array:
  """Structural similarity per image (Wang et al. 2004; tf.image.ssim).

  Local statistics use a normalised Gaussian window over 'valid' positions
  only; the SSIM map is averaged over positions and channels.

  Args:
    x, y: (B, H, W, C) images, H and W >= filter_size.
    data_range: peak-to-peak range L of the images.
    filter_size, sigma: the Gaussian window.
    k1, k2: stability constants, C1 = (k1 L)^2, C2 = (k2 L)^2.

  Returns:
    (B,) float32 in [-1, 1]; exactly 1 for identical images.
  """
  if min(x.shape[1:3]) < filter_size:
    raise ValueError(f"ssim: images {x.shape[1:3]} smaller than the "
                     f"{filter_size}x{filter_size} window")
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  taps = _gaussian_1d(filter_size, sigma)
  c1 = (k1 * data_range) ** 2
  c2 = (k2 * data_range) ** 2
  mu_x, mu_y = _filter_valid(x, taps), _filter_valid(y, taps)
  # (Co)variances are shift-invariant: centring each image channel first
  # keeps E[x^2] - E[x]^2 from cancelling catastrophically in float32 (on a
  # flat image it would leave ~1e-7, not small next to C2 ~ 1e-3).
  xc = x - jnp.mean(x, axis=(1, 2), keepdims=True)
  yc = y - jnp.mean(y, axis=(1, 2), keepdims=True)
  mu_xc, mu_yc = _filter_valid(xc, taps), _filter_valid(yc, taps)
  var_x = _filter_valid(xc * xc, taps) - mu_xc * mu_xc
  var_y = _filter_valid(yc * yc, taps) - mu_yc * mu_yc
  cov = _filter_valid(xc * yc, taps) - mu_xc * mu_yc
  lum = (2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
  cs = (2.0 * cov + c2) / (var_x + var_y + c2)
  return jnp.mean(lum * cs, axis=(1, 2, 3))


def image_similarity(images: np.ndarray,
                     reference: np.ndarray) -> Dict[str, Any]:
  """Pixel agreement of images with same-seed reference images.

  Args:
    images, reference: (N, H, W, 3) uint8.

  Returns:
    JSON-ready dict: `psnr_db`, the PSNR (peak 255) of the mean squared
    error over all N images (None when they are identical: infinite);
    `per_sample_psnr_db` (N, None where identical); `mean_abs_diff`, the
    mean |difference| in 0-255 pixel units; `identical_samples`, how many
    images are bit-identical.
  """
  a = np.asarray(images, np.float64)
  b = np.asarray(reference, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")

  def db(mse):  # JSON has no infinity: None for identical images
    return None if mse == 0 else float(psnr_from_mse(mse,
                                                     data_range=255.0))

  per_mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
  return dict(psnr_db=db(float(per_mse.mean())),
              per_sample_psnr_db=[db(float(m)) for m in per_mse],
              mean_abs_diff=float(np.abs(a - b).mean()),
              identical_samples=int((per_mse == 0).sum()))
