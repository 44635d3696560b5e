"""Labelled image grids for the evaluation reports (pure: arrays in, out).

One row per caption: the caption's text in a strip on the left, then the
row's tiles (e.g. the reference emoji and its samples). The text is drawn
with Pillow's default font (FreeType when Pillow has it, so any Unicode the
font covers; else the bitmap font, with non-ASCII replaced by '?').
Writing the result is the caller's (`toprovar_jax.io.write_png_atomic`).

Dimension letters: R rows, K tiles per row, S tile side.
"""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from toprovar_jax import io

_TEXT_RGB = (0, 0, 0)


def _font(size: int):
  try:
    return ImageFont.load_default(size=size), True
  except (ImportError, OSError, TypeError):
    # Pillow without FreeType: the fixed bitmap font, Latin-1 only.
    return ImageFont.load_default(), False


def captioned_grid(rows: np.ndarray, labels: Sequence[str], *,
                   label_width: int = 200, font_size: int = 14,
                   pad: int = 2) -> np.ndarray:
  """Tiles with a text label left of every row.

  Args:
    rows: (R, K, S, S, 3) uint8 tiles.
    labels: R strings; long ones wrap onto as many lines as fit in S.
    label_width: width of the text strip in pixels.
    font_size: text size in pixels (FreeType font only).
    pad: white pixels between and around tiles.

  Returns:
    (R (S + pad) + pad, label_width + K (S + pad) + pad, 3) uint8.
  """
  rows = np.asarray(rows)
  if rows.ndim != 5 or rows.dtype != np.uint8 or rows.shape[-1] != 3:
    raise ValueError(f"rows: expected uint8 (R, K, S, S, 3), got "
                     f"{rows.dtype} {rows.shape}")
  if len(labels) != rows.shape[0]:
    raise ValueError(f"labels: {len(labels)} for {rows.shape[0]} rows")
  num_rows, k, side = rows.shape[:3]
  tiles = io.image_grid(rows.reshape(num_rows * k, side, side, 3),
                        num_cols=k, pad=pad)
  canvas = Image.new("RGB", (label_width + tiles.shape[1], tiles.shape[0]),
                     (255, 255, 255))
  canvas.paste(Image.fromarray(tiles), (label_width, 0))
  draw = ImageDraw.Draw(canvas)
  font, unicode_ok = _font(font_size)
  line_h = font.getbbox("Ag")[3] + 2
  # Characters per line: the strip over the width of a typical letter.
  chars = max(8, int(label_width / max(font.getlength("n"), 1)) - 1)
  max_lines = max(1, side // line_h)
  for r, label in enumerate(labels):
    if not unicode_ok:
      label = label.encode("latin-1", "replace").decode("latin-1")
    lines = textwrap.wrap(label, chars)[:max_lines] or [""]
    y = pad + r * (side + pad) + (side - line_h * len(lines)) // 2
    for i, line in enumerate(lines):
      draw.text((4, y + i * line_h), line, fill=_TEXT_RGB, font=font)
  return np.asarray(canvas, np.uint8)
