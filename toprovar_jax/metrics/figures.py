"""Labelled image grids for the evaluation reports (pure: arrays in, out).

`captioned_grid`: one row per caption, the caption's text in a strip on the
left, then the row's tiles (e.g. the reference emoji and its samples).
`column_grid`: one column per caption, its text in a strip on top, then the
column's tiles (the reference emoji in the first row, samples below).
`table_grid`: both (e.g. one row per plan, one column per caption). The
text is drawn with Pillow's default font (FreeType when Pillow has it, so
any Unicode the font covers; else the bitmap font, with non-ASCII replaced
by '?').
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


def _check_tiles(tiles, labels: Sequence[str], name: str,
                 shape: str) -> np.ndarray:
  """uint8 (N, K, S, S, 3) tiles with one label per N, or ValueError."""
  tiles = np.asarray(tiles)
  if tiles.ndim != 5 or tiles.dtype != np.uint8 or tiles.shape[-1] != 3:
    raise ValueError(f"{name}: expected uint8 {shape}, got {tiles.dtype} "
                     f"{tiles.shape}")
  if len(labels) != tiles.shape[0]:
    raise ValueError(f"labels: {len(labels)} for {tiles.shape[0]} {name}")
  return tiles


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
  rows = _check_tiles(rows, labels, "rows", "(R, K, S, S, 3)")
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


def column_grid(columns: np.ndarray, labels: Sequence[str], *,
                label_height: int = 48, font_size: int = 12,
                pad: int = 2) -> np.ndarray:
  """Tiles with a text label above every column.

  Args:
    columns: (C, K, S, S, 3) uint8 tiles, K per column, top to bottom.
    labels: C strings; long ones wrap onto as many lines as fit in the
      strip.
    label_height: height of the text strip in pixels.
    font_size: text size in pixels (FreeType font only).
    pad: white pixels between and around tiles.

  Returns:
    (label_height + K (S + pad) + pad, C (S + pad) + pad, 3) uint8.
  """
  columns = _check_tiles(columns, labels, "columns", "(C, K, S, S, 3)")
  num_cols, k, side = columns.shape[:3]
  # Row-major tiles: row r holds tile r of every column.
  tiles = io.image_grid(np.swapaxes(columns, 0, 1).reshape(
      k * num_cols, side, side, 3), num_cols=num_cols, pad=pad)
  canvas = Image.new("RGB", (tiles.shape[1], label_height + tiles.shape[0]),
                     (255, 255, 255))
  canvas.paste(Image.fromarray(tiles), (0, label_height))
  _column_labels(canvas, labels, x0=0, side=side, pad=pad,
                 label_height=label_height, font_size=font_size)
  return np.asarray(canvas, np.uint8)


def _column_labels(canvas: Image.Image, labels: Sequence[str], *, x0: int,
                   side: int, pad: int, label_height: int,
                   font_size: int) -> None:
  """Draws label c above the column of tiles starting at x0 + pad +
  c (side + pad), bottom-aligned in the top `label_height` pixels."""
  draw = ImageDraw.Draw(canvas)
  font, unicode_ok = _font(font_size)
  line_h = font.getbbox("Ag")[3] + 2
  # Lines as wide as a tile, so no label runs into its neighbour's column.
  chars = max(1, int((side - 4) / max(font.getlength("n"), 1)))
  max_lines = max(1, (label_height - 2) // line_h)
  for c, label in enumerate(labels):
    if not unicode_ok:
      label = label.encode("latin-1", "replace").decode("latin-1")
    lines = textwrap.wrap(label, chars)[:max_lines] or [""]
    y = label_height - line_h * len(lines) - 2
    for i, line in enumerate(lines):
      draw.text((x0 + pad + c * (side + pad) + 2, y + i * line_h), line,
                fill=_TEXT_RGB, font=font)


def table_grid(tiles: np.ndarray, row_labels: Sequence[str],
               column_labels: Sequence[str], *, label_width: int = 200,
               label_height: int = 48, font_size: int = 12,
               pad: int = 2) -> np.ndarray:
  """`captioned_grid` with a label above every column as well.

  E.g. one row per plan (its name and scores), one column per caption.

  Args:
    tiles: (R, K, S, S, 3) uint8, K per row.
    row_labels: R strings, drawn left of the rows.
    column_labels: K strings, drawn above the columns.
    label_width, label_height: the left and top text strips in pixels.
    font_size: text size in pixels (FreeType font only).
    pad: white pixels between and around tiles.

  Returns:
    (label_height + R (S + pad) + pad, label_width + K (S + pad) + pad, 3)
    uint8.
  """
  tiles = _check_tiles(tiles, row_labels, "tiles", "(R, K, S, S, 3)")
  if len(column_labels) != tiles.shape[1]:
    raise ValueError(f"column_labels: {len(column_labels)} for "
                     f"{tiles.shape[1]} columns")
  body = captioned_grid(tiles, row_labels, label_width=label_width,
                        font_size=font_size, pad=pad)
  canvas = Image.new("RGB", (body.shape[1], label_height + body.shape[0]),
                     (255, 255, 255))
  canvas.paste(Image.fromarray(body), (0, label_height))
  _column_labels(canvas, column_labels, x0=label_width, side=tiles.shape[2],
                 pad=pad, label_height=label_height, font_size=font_size)
  return np.asarray(canvas, np.uint8)
