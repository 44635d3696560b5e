"""A labelled scatter plot drawn with Pillow (no matplotlib in the image).

Used for fidelity / cost frontiers (e.g. SSIM vs FLOP reduction, one point
per plan). Pure: points in, a uint8 image out; writing it is the caller's
(`toprovar_jax.io.write_png_atomic`).

  nice_ticks     round tick values covering a range
  scatter_plot   axes, ticks, one labelled marker per point

Dimension letters: P points, H, W image size.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189),
            (255, 127, 14), (23, 190, 207), (140, 86, 75), (227, 119, 194))
_AXIS = (0, 0, 0)
_GRID = (225, 225, 225)


def nice_ticks(lo: float, hi: float, count: int = 5) -> Tuple[float, ...]:
  """About `count` round values (steps 1, 2 or 5 x 10^k) spanning [lo, hi].

  The first tick is <= lo and the last >= hi; lo == hi is widened.
  """
  if not (math.isfinite(lo) and math.isfinite(hi)):
    raise ValueError(f"nice_ticks: range [{lo}, {hi}] is not finite")
  if hi < lo:
    lo, hi = hi, lo
  if hi - lo < 1e-12:
    pad = max(abs(lo) * 0.05, 0.05)
    lo, hi = lo - pad, hi + pad
  raw = (hi - lo) / max(count - 1, 1)
  mag = 10.0 ** math.floor(math.log10(raw))
  step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
  first = math.floor(lo / step + 1e-9) * step
  last = math.ceil(hi / step - 1e-9) * step
  n = int(round((last - first) / step))
  return tuple(round(first + i * step, 12) for i in range(n + 1))


def _fmt(v: float) -> str:
  return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def scatter_plot(xs: Sequence[float], ys: Sequence[Optional[float]],
                 labels: Sequence[str], *, x_label: str, y_label: str,
                 title: str = "", size: Tuple[int, int] = (720, 520)
                 ) -> np.ndarray:
  """One marker per point, its label beside it, on ticked axes.

  Args:
    xs, ys: P coordinates; a point with a non-finite or None coordinate is
      not drawn (its label is listed in the title line as 'not shown').
    labels: P strings.
    x_label, y_label: axis titles.
    title: text above the plot.
    size: (W, H) of the image in pixels.

  Returns:
    (H, W, 3) uint8 RGB.

  Raises:
    ValueError: lengths differ or no point is drawable.
  """
  if not len(xs) == len(ys) == len(labels):
    raise ValueError(f"scatter_plot: {len(xs)} xs, {len(ys)} ys, "
                     f"{len(labels)} labels")
  ok = [i for i in range(len(xs)) if xs[i] is not None and ys[i] is not None
        and math.isfinite(xs[i]) and math.isfinite(ys[i])]
  if not ok:
    raise ValueError("scatter_plot: no point with finite coordinates")
  width, height = size
  left, right, top, bottom = 80, 30, 40, 55
  xt = nice_ticks(min(xs[i] for i in ok), max(xs[i] for i in ok))
  yt = nice_ticks(min(ys[i] for i in ok), max(ys[i] for i in ok))
  canvas = Image.new("RGB", (width, height), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  font = ImageFont.load_default()

  def px(x, y):
    u = (x - xt[0]) / (xt[-1] - xt[0])
    v = (y - yt[0]) / (yt[-1] - yt[0])
    return (left + u * (width - left - right),
            height - bottom - v * (height - top - bottom))

  for t in xt:
    x0, _ = px(t, yt[0])
    draw.line([(x0, top), (x0, height - bottom)], fill=_GRID)
    draw.text((x0 - 3 * len(_fmt(t)), height - bottom + 6), _fmt(t),
              fill=_AXIS, font=font)
  for t in yt:
    _, y0 = px(xt[0], t)
    draw.line([(left, y0), (width - right, y0)], fill=_GRID)
    draw.text((left - 8 - 6 * len(_fmt(t)), y0 - 6), _fmt(t), fill=_AXIS,
              font=font)
  draw.rectangle([left, top, width - right, height - bottom], outline=_AXIS)
  draw.text((left + (width - left - right) // 2 - 3 * len(x_label),
             height - bottom + 26), x_label, fill=_AXIS, font=font)
  # The y title runs up the left edge (text drawn flat, then turned).
  strip = Image.new("RGB", (int(font.getlength(y_label)) + 4, 14),
                    (255, 255, 255))
  ImageDraw.Draw(strip).text((2, 1), y_label, fill=_AXIS, font=font)
  strip = strip.rotate(90, expand=True)
  canvas.paste(strip, (4, max(top, (height - strip.height) // 2)))
  hidden = [labels[i] for i in range(len(xs)) if i not in ok]
  head = title + (f"  (not shown: {', '.join(hidden)})" if hidden else "")
  draw.text((left, 8), head, fill=_AXIS, font=font)
  for k, i in enumerate(ok):
    x, y = px(xs[i], ys[i])
    colour = _COLOURS[k % len(_COLOURS)]
    draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=colour, outline=_AXIS)
    # Labels right of the point, flipped left near the right edge.
    text_w = font.getlength(labels[i])
    tx = x + 8 if x + 8 + text_w < width - 4 else x - 8 - text_w
    draw.text((tx, y - 6 - 10 * (k % 2)), labels[i], fill=colour, font=font)
  return np.asarray(canvas, np.uint8)
