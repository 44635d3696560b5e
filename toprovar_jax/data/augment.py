"""Emoji RGBA images over a background, and the training augmentation.

  augment(rng, x)   training batches: random background colour, scale, shift
                    (`sample_augment_params` draws, `apply_augment` applies)
  composite(x)      evaluation: RGBA over a fixed (white) background

Shapes: B batch, S image side in pixels; RGBA images are (..., S, S, 4)
uint8 and RGB ones (..., S, S, 3). The rendered emoji come from
`toprovar_jax.data.emoji`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Union

import numpy as np


@dataclasses.dataclass(frozen=True, kw_only=True)
class AugmentConfig:
  """Random training augmentation (SPEC §8: background colour, shift, scale).

  Attributes:
    shift_frac: largest shift per axis, as a fraction of the image side.
    scale_min: smallest zoom factor (about the image centre).
    scale_max: largest zoom factor; above 1 could clip emoji.
    white_prob: probability of a white background, the evaluation one
      (`composite`), so training also sees the evaluation distribution.
  """
  shift_frac: float = 0.06
  scale_min: float = 0.85
  scale_max: float = 1.0
  white_prob: float = 0.2


@dataclasses.dataclass(frozen=True, kw_only=True)
class AugmentParams:
  """The random draws of one `augment` call (B images).

  Attributes:
    background: (B, 3) uint8 background colours.
    scale: (B,) float zoom factors about the image centre.
    shift: (B, 2) float (dy, dx) shifts in pixels, applied after scaling.
  """
  background: np.ndarray
  scale: np.ndarray
  shift: np.ndarray



def _check_rgba(rgba: np.ndarray) -> np.ndarray:
  rgba = np.asarray(rgba)
  if rgba.dtype != np.uint8 or rgba.ndim < 3 or rgba.shape[-1] != 4:
    raise ValueError(
        f"expected uint8 (..., S, S, 4) RGBA, got {rgba.dtype} {rgba.shape}")
  return rgba


def _over(rgb_premultiplied: np.ndarray, alpha: np.ndarray,
          background: np.ndarray) -> np.ndarray:
  """Porter-Duff 'over' onto an opaque background, as uint8.

  Args:
    rgb_premultiplied: (..., 3, S, S) float32 colour times alpha, in [0, 1].
    alpha: (..., S, S) float32 in [0, 1].
    background: (..., 3, 1, 1) float32 in [0, 1].

  Returns:
    (..., S, S, 3) uint8.
  """
  # Channel-planar arithmetic: numpy is several times slower on a trailing
  # axis of length 3 or 4 than on whole image planes.
  rgb = rgb_premultiplied + (1.0 - alpha[..., None, :, :]) * background
  rgb = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
  return np.moveaxis(rgb, -3, -1)


def _planes(rgba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """uint8 (..., S, S, 4) -> premultiplied (..., 3, S, S), alpha (..., S, S)."""
  x = np.moveaxis(rgba, -1, -3).astype(np.float32) / 255.0
  return x[..., :3, :, :] * x[..., 3:, :, :], x[..., 3, :, :]


def _background(colour: Union[Sequence[int], np.ndarray]) -> np.ndarray:
  """uint8 RGB (..., 3) -> float32 (..., 3, 1, 1) in [0, 1]."""
  return (np.asarray(colour, np.float32) / 255.0)[..., None, None]


def composite(rgba: np.ndarray,
              background: Union[Sequence[int], np.ndarray] = (255, 255, 255)
              ) -> np.ndarray:
  """Puts RGBA images over an opaque background (evaluation: white).

  Args:
    rgba: (..., S, S, 4) uint8.
    background: uint8 RGB colour, (3,) or one per image, (..., 3).

  Returns:
    (..., S, S, 3) uint8 RGB; exactly `background` where alpha is 0.
  """
  rgb_premultiplied, alpha = _planes(_check_rgba(rgba))
  return _over(rgb_premultiplied, alpha, _background(background))


def sample_augment_params(rng: np.random.Generator, *, batch_size: int,
                          image_size: int,
                          config: AugmentConfig = AugmentConfig()
                          ) -> AugmentParams:
  """Draws background colours, scales and shifts for B images.

  Args:
    rng: consumed in a fixed order, so the draws are a function of its state.
    batch_size: B.
    image_size: S, the unit of `config.shift_frac`.
    config: ranges.

  Returns:
    `AugmentParams` for B images.
  """
  background = rng.integers(0, 256, (batch_size, 3)).astype(np.uint8)
  background[rng.random(batch_size) < config.white_prob] = 255
  scale = rng.uniform(config.scale_min, config.scale_max, batch_size)
  shift = rng.uniform(-1.0, 1.0, (batch_size, 2)) * (
      config.shift_frac * image_size)
  return AugmentParams(background=background, scale=scale, shift=shift)


def _bilinear_indices(scale: np.ndarray, shift: np.ndarray, size: int):
  """Source rows (or columns) and weights for one axis; each (B, S).

  Output pixel centre p maps back to source centre c + (p − c − t) / s, with
  c the image centre; indices point into the image padded by one transparent
  pixel per side, so samples outside the image fade to transparent.
  """
  centre = size / 2.0
  p = np.arange(size) + 0.5
  source = centre + (p[None, :] - centre - shift[:, None]) / scale[:, None]
  u = np.clip(source - 0.5 + 1.0, 0.0, size + 1.0)  # +1: the padding
  i0 = np.minimum(np.floor(u).astype(np.int64), size)
  return i0, i0 + 1, (u - i0).astype(np.float32)


def _resample_rows(planes: np.ndarray, i0: np.ndarray, i1: np.ndarray,
                   frac: np.ndarray) -> np.ndarray:
  """Linear interpolation along axis 1 of (B, H, ...) at (B, S) positions."""
  batch = np.arange(planes.shape[0])[:, None]
  weight = frac.reshape(frac.shape + (1,) * (planes.ndim - 2))
  # Gathering whole rows copies contiguous blocks, hence rows, not columns.
  return planes[batch, i0] * (1.0 - weight) + planes[batch, i1] * weight


def apply_augment(rgba: np.ndarray, params: AugmentParams, *,
                  normalize: bool = False) -> np.ndarray:
  """Scales and shifts RGBA images, then puts them over their backgrounds.

  Resampling is bilinear in premultiplied alpha (so transparent pixels'
  colour never leaks in) and separable, since the transform is an
  axis-aligned scale plus shift. With scale 1 and whole-pixel shifts it is an
  exact copy: the result equals `composite` of the shifted image.

  Args:
    rgba: (B, S, S, 4) uint8.
    params: B draws from `sample_augment_params`.
    normalize: return float32 in [-1, 1] instead of uint8.

  Returns:
    (B, S, S, 3) uint8 RGB, or float32 in [-1, 1] if `normalize`.
  """
  rgba = _check_rgba(rgba)
  if rgba.ndim != 4 or rgba.shape[1] != rgba.shape[2]:
    raise ValueError(f"expected (B, S, S, 4), got {rgba.shape}")
  s = rgba.shape[1]
  rgb_premultiplied, alpha = _planes(rgba)
  # (B, H, W, 4) planes, rows outermost for `_resample_rows`, padded by one
  # transparent pixel.
  planes = np.concatenate([rgb_premultiplied, alpha[:, None]], axis=1)
  planes = np.pad(planes.transpose(0, 2, 1, 3), ((0, 0), (1, 1), (0, 0),
                                                 (1, 1)))
  planes = _resample_rows(
      planes, *_bilinear_indices(params.scale, params.shift[:, 0], s))
  # Columns: swap W into the row position, resample, swap back.
  planes = _resample_rows(
      np.ascontiguousarray(planes.transpose(0, 3, 2, 1)),
      *_bilinear_indices(params.scale, params.shift[:, 1], s))
  planes = planes.transpose(0, 2, 3, 1)  # (B, 4, H, W)
  rgb = _over(planes[:, :3], planes[:, 3], _background(params.background))
  if normalize:
    return rgb.astype(np.float32) / 127.5 - 1.0
  return rgb


def augment(rng: np.random.Generator, rgba_batch: np.ndarray, *,
            image_size: int, config: AugmentConfig = AugmentConfig(),
            normalize: bool = False) -> np.ndarray:
  """Random training view of each image: background, scale and shift.

  Args:
    rng: the only source of randomness; same state, same output.
    rgba_batch: (B, S, S, 4) uint8 RGBA, S == image_size.
    image_size: S; build the dataset at the training size rather than
      resizing here (`make_dataset(image_size=...)` uses Lanczos).
    config: augmentation ranges.
    normalize: return float32 in [-1, 1] instead of uint8.

  Returns:
    (B, S, S, 3) uint8 RGB, or float32 in [-1, 1] if `normalize`.

  Raises:
    ValueError: the batch is not (B, image_size, image_size, 4) uint8.
  """
  rgba_batch = _check_rgba(rgba_batch)
  if rgba_batch.ndim != 4 or rgba_batch.shape[1:3] != (image_size, image_size):
    raise ValueError(f"expected (B, {image_size}, {image_size}, 4), got "
                     f"{rgba_batch.shape}; build the dataset at this size")
  params = sample_augment_params(rng, batch_size=rgba_batch.shape[0],
                                 image_size=image_size, config=config)
  return apply_augment(rgba_batch, params, normalize=normalize)
