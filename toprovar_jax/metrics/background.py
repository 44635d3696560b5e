"""Flatness of the background: position-fixed artefacts such as v1's speck.

Emoji are drawn on white (`data.augment.composite`), so wherever the reference
emoji has no ink a good reconstruction or sample is white too. Averaging,
per pixel position, how far images stray from white there shows whether a
model paints something at a fixed place whatever the content: model v1's
decoder drew a multicoloured speck ~8-20 px from the top-left corner of
every image (BENCHMARKS.md, "The top-left speck of model v1").

  background_deviation  per-position mean deviation from white over the
                        background pixels of a set, its peak and where it
                        is, and the mean over a 24 px square at each corner

Dimension letters: N images, S side in pixels.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

# Side of the corner squares, and their inset from the border (the speck of
# v1 sat 8-20 px from the top-left corner; the outermost ring of pixels is
# left out, where every decoder errs a little).
_CORNER, _INSET = 24, 2


def background_deviation(images: np.ndarray, rgba: np.ndarray, *,
                         margin: int = 6) -> Dict[str, Any]:
  """How far `images` stray from white where their references have no ink.

  Args:
    images: (N, S, S, 3) uint8 reconstructions or samples.
    rgba: (N, S, S, 4) uint8 references (their alpha says where ink is).
    margin: pixels around the ink also left out (edges of the glyph, small
      misplacements of a sample).

  Returns:
    mean: mean deviation (0-255, max over RGB of 255 - value) over all
      background pixels;
    peak, peak_at: the largest per-position mean (positions that are
      background in at least half the images, the outermost 2 px ring left
      out) and its (row, col); None when no position qualifies;
    corners: {"top_left", "top_right", "bottom_left", "bottom_right"}: the
      mean over a 24 px square, 2 px in from each corner;
    num_images.

  Raises:
    ValueError: shapes that do not match.
  """
  images, rgba = np.asarray(images), np.asarray(rgba)
  if images.shape[:3] != rgba.shape[:3] or images.shape[-1] != 3 or (
      rgba.shape[-1] != 4):
    raise ValueError(f"images {images.shape} and rgba {rgba.shape}: expected "
                     "(N, S, S, 3) and (N, S, S, 4)")
  ink = rgba[..., 3] > 0
  pad = np.pad(ink, ((0, 0), (margin, margin), (margin, margin)))
  # Square dilation as a max over shifted windows (separable).
  s = ink.shape[1]
  rows = np.zeros_like(ink)
  for d in range(2 * margin + 1):
    rows |= pad[:, d:d + s, margin:margin + s]
  pad = np.pad(rows, ((0, 0), (0, 0), (margin, margin)))
  near_ink = np.zeros_like(ink)
  for d in range(2 * margin + 1):
    near_ink |= pad[:, :, d:d + s]
  background = ~near_ink
  deviation = (255.0 - images.astype(np.float64)).max(-1)
  count = background.sum(0)
  per_position = np.where(
      count > 0, (deviation * background).sum(0) / np.maximum(count, 1), 0.0)
  valid = count >= max(1, len(images) // 2)
  valid[:_INSET] = valid[-_INSET:] = False
  valid[:, :_INSET] = valid[:, -_INSET:] = False
  peak_map = np.where(valid, per_position, -1.0)
  at = np.unravel_index(int(np.argmax(peak_map)), peak_map.shape)
  peak = float(peak_map[at]) if valid.any() else None
  a, b = _INSET, _INSET + _CORNER
  squares = dict(top_left=np.s_[a:b, a:b], top_right=np.s_[a:b, s - b:s - a],
                 bottom_left=np.s_[s - b:s - a, a:b],
                 bottom_right=np.s_[s - b:s - a, s - b:s - a])
  corners = {}
  for name, sl in squares.items():
    w = count[sl]
    corners[name] = (float((per_position[sl] * w).sum() / w.sum())
                     if w.sum() else None)
  return dict(mean=float((deviation * background).sum()
                         / max(background.sum(), 1)),
              peak=peak,
              peak_at=None if peak is None else [int(at[0]), int(at[1])],
              corners=corners, num_images=int(len(images)))
