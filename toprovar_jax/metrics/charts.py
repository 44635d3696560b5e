"""Calibration figures drawn with Pillow (pure: numbers in, uint8 image out).

  rho_chart          ρ_s per scale, the τ line, D of both directions
  layer_ratio_chart  log ϱ_l per layer as bars, Global / Detail and ϱ*
  map_grid           per-layer entropy maps (colour-mapped tiles)
  kept_token_grid    images with the pruned tokens of each scale greyed
                     (the paper's Fig. 7)
  frontier_chart     SSIM against FLOP reduction of the plans tried

Writing the result is the caller's (`toprovar_jax.io.write_png_atomic`).
Dimension letters: S scales, L layers, k images, h×w a token grid.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from PIL import ImageDraw

from toprovar_jax.metrics import figures

_W, _H = 640, 400
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 20, 36, 48
BLUE, ORANGE, GREY, RED, GREEN = ((31, 119, 180), (255, 127, 14),
                                  (150, 150, 150), (214, 39, 40),
                                  (44, 160, 44))


class _Axes:
  """A blank chart with linear x / y axes mapped into the plot box."""

  def __init__(self, xlim, ylim, title: str, xlabel: str, ylabel: str):
    self.img = Image.new("RGB", (_W, _H), (255, 255, 255))
    self.draw = ImageDraw.Draw(self.img)
    self.font, _ = figures._font(12)  # pylint: disable=protected-access
    self.x0, self.x1 = xlim
    self.y0, self.y1 = ylim
    if self.x1 == self.x0:
      self.x1 = self.x0 + 1
    if self.y1 == self.y0:
      self.y1 = self.y0 + 1
    d = self.draw
    d.rectangle((_LEFT, _TOP, _W - _RIGHT, _H - _BOTTOM), outline=(0, 0, 0))
    d.text((_LEFT, 8), title, fill=(0, 0, 0), font=self.font)
    d.text((_W // 2 - 4 * len(xlabel), _H - 18), xlabel, fill=(0, 0, 0),
           font=self.font)
    d.text((4, _TOP - 20), ylabel, fill=(0, 0, 0), font=self.font)
    for v in np.linspace(self.y0, self.y1, 5):
      _, y = self.xy(self.x0, v)
      d.line((_LEFT - 4, y, _LEFT, y), fill=(0, 0, 0))
      d.text((6, y - 6), f"{v:.3g}", fill=(0, 0, 0), font=self.font)

  def xy(self, x, y) -> Tuple[float, float]:
    px = _LEFT + (x - self.x0) / (self.x1 - self.x0) * (_W - _LEFT - _RIGHT)
    py = (_H - _BOTTOM) - (y - self.y0) / (self.y1 - self.y0) * (
        _H - _TOP - _BOTTOM)
    return px, py

  def xtick(self, x, label: str):
    px, _ = self.xy(x, self.y0)
    self.draw.line((px, _H - _BOTTOM, px, _H - _BOTTOM + 4), fill=(0, 0, 0))
    self.draw.text((px - 3 * len(label), _H - _BOTTOM + 6), label,
                   fill=(0, 0, 0), font=self.font)

  def line(self, xs, ys, color, width=2, dots=True):
    pts = [self.xy(x, y) for x, y in zip(xs, ys)]
    if len(pts) > 1:
      self.draw.line(pts, fill=color, width=width)
    if dots:
      for px, py in pts:
        self.draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=color)

  def hline(self, y, color, label: str = ""):
    _, py = self.xy(self.x0, y)
    self.draw.line((_LEFT, py, _W - _RIGHT, py), fill=color, width=1)
    if label:
      self.draw.text((_W - _RIGHT - 8 * len(label), py - 14), label,
                     fill=color, font=self.font)

  def vline(self, x, color, label: str = "", width=1):
    px, _ = self.xy(x, self.y0)
    self.draw.line((px, _TOP, px, _H - _BOTTOM), fill=color, width=width)
    if label:
      self.draw.text((px + 3, _TOP + 2), label, fill=color, font=self.font)

  def legend(self, items: Sequence[Tuple[str, tuple]]):
    for i, (label, color) in enumerate(items):
      y = _TOP + 6 + 14 * i
      self.draw.rectangle((_LEFT + 10, y, _LEFT + 20, y + 8), fill=color)
      self.draw.text((_LEFT + 25, y - 3), label, fill=(0, 0, 0),
                     font=self.font)

  def array(self) -> np.ndarray:
    return np.asarray(self.img, np.uint8)


def rho_chart(rho: Sequence[float], tau: float, depth_rise: Optional[int],
              depth_fall: Optional[int], depth: Optional[int]) -> np.ndarray:
  """ρ_s per scale with the τ line and D of both directions ('rise':
  first ρ_s ≥ τ, 'fall': first ρ_s ≤ τ); the chosen D drawn thick."""
  s = np.arange(len(rho))
  ax = _Axes((0, len(rho) - 1), (0, 1), "low-entropy ratio rho_s per scale",
             "scale s", "rho_s")
  for x in s:
    ax.xtick(x, str(x))
  ax.hline(tau, GREY, f"tau={tau:g}")
  for d, name, color in ((depth_rise, "rise", GREEN), (depth_fall, "fall",
                                                        ORANGE)):
    if d is not None:
      ax.vline(d, color, f"D_{name}={d}", width=3 if d == depth else 1)
  ax.line(s, rho, BLUE)
  ax.legend([("rho_s", BLUE), ("D rise (>= tau)", GREEN),
             ("D fall (<= tau)", ORANGE)])
  return ax.array()


def layer_ratio_chart(ratios: Sequence[float], rho_star: float,
                      global_layers: Sequence[int]) -> np.ndarray:
  """log10 ϱ_l per layer as bars (Global orange, Detail blue; ∞ drawn at
  the top), the cut ϱ* as a line."""
  cap = 6.0
  logs = [min(math.log10(max(r, 1.0)), cap) for r in ratios]
  top = max(logs + [math.log10(max(min(rho_star, 1e6), 1.0)), 0.1]) * 1.1
  ax = _Axes((-0.5, len(ratios) - 0.5), (0, top),
             "layer SVD ratio sigma1/sigma2 (log10) at the representative "
             "scale", "layer l", "log10")
  for l, v in enumerate(logs):
    x0, y0 = ax.xy(l - 0.35, 0)
    x1, y1 = ax.xy(l + 0.35, v)
    ax.draw.rectangle((x0, y1, x1, y0),
                      fill=ORANGE if l in global_layers else BLUE)
    ax.xtick(l, str(l))
  if math.isfinite(rho_star):
    ax.hline(math.log10(rho_star), RED, f"rho*={rho_star:.3g}")
  ax.legend([("Global (F)", ORANGE), ("Detail (S / X)", BLUE)])
  return ax.array()


def colormap(x: np.ndarray) -> np.ndarray:
  """Values in [0, 1] -> uint8 RGB, dark blue -> green -> yellow."""
  stops = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140],
                    [94, 201, 98], [253, 231, 37]], np.float64)
  t = np.clip(np.asarray(x, np.float64), 0, 1) * (len(stops) - 1)
  i = np.minimum(t.astype(int), len(stops) - 2)
  f = (t - i)[..., None]
  return (stops[i] * (1 - f) + stops[i + 1] * f).round().astype(np.uint8)


def _tile(rgb: np.ndarray, side: int) -> np.ndarray:
  return np.asarray(Image.fromarray(rgb).resize((side, side),
                                                Image.NEAREST), np.uint8)


def map_grid(maps: np.ndarray, labels: Sequence[str], *, side: int = 96,
             per_row: int = 8) -> np.ndarray:
  """(L, h, w) maps as colour tiles, each min-max scaled on its own, rows of
  `per_row` with the rows' layers as labels."""
  maps = np.asarray(maps, np.float64)
  lo = maps.min(axis=(1, 2), keepdims=True)
  hi = maps.max(axis=(1, 2), keepdims=True)
  tiles = [_tile(colormap((m - a) / max(b - a, 1e-12)), side)
           for m, a, b in zip(maps, lo, hi)]
  rows, names = [], []
  for r in range(0, len(tiles), per_row):
    row = tiles[r:r + per_row]
    row += [np.full_like(tiles[0], 255)] * (per_row - len(row))
    rows.append(row)
    names.append(", ".join(labels[r:r + per_row]))
  return figures.captioned_grid(np.array(rows), names, label_width=160,
                                font_size=11)


def kept_token_grid(images: np.ndarray, masks: Dict[int, np.ndarray],
                    *, side: int = 128) -> np.ndarray:
  """One row per image: the image, then per pruned scale the image with the
  pruned tokens greyed. masks[s]: (k, h_s, w_s) bool, True = kept."""
  images = np.asarray(images)
  rows = []
  for i, img in enumerate(images):
    base = _tile(img, side).astype(np.float64)
    row = [base.astype(np.uint8)]
    for s in sorted(masks):
      keep = _tile(np.repeat(masks[s][i][..., None].astype(np.uint8) * 255,
                             3, axis=-1), side)[..., :1] > 0
      row.append(np.where(keep, base, 0.25 * base + 0.75 * 160)
                 .astype(np.uint8))
    rows.append(row)
  scales = ", ".join(f"s{s}" for s in sorted(masks))
  return figures.captioned_grid(
      np.array(rows), [f"image {i}: dense, pruned ({scales}) grey"
                       for i in range(len(images))], label_width=140,
      font_size=11)


def frontier_chart(points: Sequence[Tuple[float, float]], *,
                   target: Optional[float] = None,
                   chosen: Optional[int] = None,
                   title: str = "SSIM vs dense against FLOP reduction"
                   ) -> np.ndarray:
  """Scatter of (FLOP reduction ×, SSIM) points; the target SSIM as a line
  and the chosen point in red."""
  xs = [p[0] for p in points] or [1.0]
  ys = [p[1] for p in points] or [1.0]
  lo = min(ys + ([target] if target is not None else []))
  ax = _Axes((1.0, max(xs) * 1.05 + 1e-3), (max(0.0, lo - 0.05), 1.0),
             title, "FLOP reduction (x, dense = 1)", "SSIM")
  for v in np.linspace(1.0, max(xs) * 1.05 + 1e-3, 6):
    ax.xtick(v, f"{v:.2f}")
  if target is not None:
    ax.hline(target, GREY, f"target {target:g}")
  for i, (x, y) in enumerate(points):
    px, py = ax.xy(x, y)
    color = RED if i == chosen else BLUE
    r = 5 if i == chosen else 3
    ax.draw.ellipse((px - r, py - r, px + r, py + r), fill=color)
  return ax.array()
