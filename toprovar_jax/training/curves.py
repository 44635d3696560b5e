"""Loss curves of a training run: `curves.json` and a Pillow-drawn PNG.

The run's `metrics.jsonl` holds one JSON object per line, each with a `step`
and any number of scalar metrics (`train/loss`, `eval/psnr`, `lr`, ...); the
training loop appends to it (`append_metrics`) and, when it resumes, drops
the rows a crashed run logged after its last checkpoint (`truncate_metrics`).
`write_curves` turns it into

  curves.json   {metric: {"steps": [...], "values": [...]}}, steps ascending
  curves.png    one panel per metric, two panels a row

No matplotlib on the GPU machine, so the plot is drawn with `ImageDraw`:
a frame, min / max tick labels, and the curve as a polyline. A positive
metric spanning more than `_LOG_RATIO` is drawn on a log axis (losses).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from toprovar_jax import io

PathLike = Union[str, os.PathLike]
Curves = Dict[str, Dict[str, List[float]]]

# Row keys that are bookkeeping, not curves.
_NOT_CURVES = ("step", "time", "wall_s", "run")
# A positive series whose max / min exceeds this gets a log y axis.
_LOG_RATIO = 20.0
_PANEL_W, _PANEL_H = 420, 260
_MARGIN_L, _MARGIN_R, _MARGIN_T, _MARGIN_B = 62, 14, 24, 28
_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189),
            (255, 127, 14), (23, 190, 207))


def read_metrics(path: PathLike) -> List[Dict[str, Any]]:
  """Rows of a metrics.jsonl file; a missing file or broken line is skipped.

  A run killed while appending leaves at most one truncated last line, which
  is dropped rather than failing the next run.
  """
  path = pathlib.Path(path)
  if not path.exists():
    return []
  rows = []
  for line in path.read_text(encoding="utf-8").splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(row, dict) and "step" in row:
      rows.append(row)
  return rows


def append_metrics(path: PathLike, row: Mapping[str, Any]) -> None:
  """Appends one row (non-finite floats become null) and flushes."""
  clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None)
           for k, v in row.items()}
  with open(path, "a", encoding="utf-8") as f:
    f.write(json.dumps(clean) + "\n")
    f.flush()


def truncate_metrics(path: PathLike, last_step: int) -> None:
  """Keeps only rows up to `last_step` (the checkpoint a run resumes from).

  The file is rewritten atomically; a missing file is left missing.
  """
  path = pathlib.Path(path)
  if not path.exists():
    return
  kept = [r for r in read_metrics(path) if int(r["step"]) <= last_step]
  text = "".join(json.dumps(r) + "\n" for r in kept)
  tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, path)


def collect_curves(rows: Iterable[Mapping[str, Any]]) -> Curves:
  """{metric: {"steps", "values"}} of every finite scalar in `rows`.

  A step logged twice (a resumed run repeating a step) keeps its last value.
  """
  by_name: Dict[str, Dict[int, float]] = {}
  for row in rows:
    step = int(row["step"])
    for name, value in row.items():
      if name in _NOT_CURVES or isinstance(value, bool):
        continue
      if isinstance(value, (int, float)) and math.isfinite(value):
        by_name.setdefault(name, {})[step] = float(value)
  return {name: dict(steps=sorted(points),
                     values=[points[s] for s in sorted(points)])
          for name, points in sorted(by_name.items())}


def _fmt(v: float) -> str:
  if v == 0:
    return "0"
  if 1e-3 <= abs(v) < 1e4:
    return f"{v:.4g}"
  return f"{v:.2e}"


def _panel(draw: ImageDraw.ImageDraw, font, box: Tuple[int, int, int, int],
           name: str, steps: Sequence[float], values: Sequence[float],
           colour: Tuple[int, int, int]) -> None:
  """Draws one metric into the pixel box (x0, y0, x1, y1)."""
  x0, y0, x1, y1 = box
  px0, py0 = x0 + _MARGIN_L, y0 + _MARGIN_T
  px1, py1 = x1 - _MARGIN_R, y1 - _MARGIN_B
  v = np.asarray(values, np.float64)
  s = np.asarray(steps, np.float64)
  log = bool(v.min() > 0 and v.max() / v.min() > _LOG_RATIO)
  title = f"{name}  (last {_fmt(v[-1])}{', log y' if log else ''})"
  draw.text((px0, y0 + 5), title, fill=(0, 0, 0), font=font)
  draw.rectangle((px0, py0, px1, py1), outline=(90, 90, 90))
  y = np.log10(v) if log else v
  lo, hi = float(y.min()), float(y.max())
  if hi - lo < 1e-12:  # a flat line sits in the middle
    lo, hi = lo - 0.5, hi + 0.5
  pad = 0.05 * (hi - lo)
  lo, hi = lo - pad, hi + pad
  smin, smax = float(s.min()), float(s.max())
  sspan = max(smax - smin, 1.0)

  def to_px(si, yi):
    return (px0 + (si - smin) / sspan * (px1 - px0),
            py1 - (yi - lo) / (hi - lo) * (py1 - py0))

  # Three y ticks with light grid lines; labels in data units.
  for frac in (0.0, 0.5, 1.0):
    yv = lo + frac * (hi - lo)
    _, yp = to_px(smin, yv)
    draw.line((px0, yp, px1, yp), fill=(225, 225, 225))
    label = _fmt(10 ** yv if log else yv)
    draw.text((x0 + 4, yp - 6), label, fill=(60, 60, 60), font=font)
  draw.text((px0, py1 + 6), _fmt(smin), fill=(60, 60, 60), font=font)
  right = f"step {_fmt(smax)}"
  draw.text((px1 - 7 * len(right), py1 + 6), right, fill=(60, 60, 60),
            font=font)
  points = [to_px(si, yi) for si, yi in zip(s, y)]
  if len(points) == 1:
    (cx, cy), = points
    draw.ellipse((cx - 2, cy - 2, cx + 2, cy + 2), fill=colour)
  else:
    draw.line(points, fill=colour, width=2)


def plot_curves(curves: Mapping[str, Mapping[str, Sequence[float]]],
                num_cols: int = 2) -> np.ndarray:
  """Draws every curve in its own panel.

  Args:
    curves: as returned by `collect_curves`.
    num_cols: panels per row.

  Returns:
    (rows * 260, cols * 420, 3) uint8 RGB; a single "no metrics yet" panel
    when `curves` is empty.
  """
  names = [n for n in curves if curves[n]["steps"]]
  cols = max(1, min(num_cols, len(names)))
  rows = max(1, math.ceil(len(names) / cols))
  img = Image.new("RGB", (cols * _PANEL_W, rows * _PANEL_H), (255, 255, 255))
  draw = ImageDraw.Draw(img)
  font = ImageFont.load_default()
  if not names:
    draw.text((20, 20), "no metrics yet", fill=(0, 0, 0), font=font)
  for i, name in enumerate(names):
    r, c = divmod(i, cols)
    box = (c * _PANEL_W, r * _PANEL_H, (c + 1) * _PANEL_W, (r + 1) * _PANEL_H)
    _panel(draw, font, box, name, curves[name]["steps"],
           curves[name]["values"], _COLOURS[i % len(_COLOURS)])
  return np.asarray(img, dtype=np.uint8)


def write_curves(workdir: PathLike,
                 metrics_name: str = "metrics.jsonl") -> Tuple[pathlib.Path,
                                                               pathlib.Path]:
  """Reads `workdir/metrics.jsonl`, writes curves.json and curves.png.

  Both files are written atomically.

  Returns:
    (json path, png path).
  """
  workdir = pathlib.Path(workdir)
  curves = collect_curves(read_metrics(workdir / metrics_name))
  json_path = io.write_json_atomic(workdir / "curves.json", curves)
  png_path = io.write_png_atomic(workdir / "curves.png", plot_curves(curves))
  return json_path, png_path
