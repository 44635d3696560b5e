"""Run outputs on disk: the workdir guard and atomic writes (SPEC §9, §11).

Every file a run produces is written to a temporary file in the same
directory and moved over the target with `os.replace`, which is atomic on
POSIX: a reader (or a crash) sees the old file or the new one, never half of
one. A workdir that already holds anything is refused unless the caller
passes `overwrite=True`, and the refusal touches nothing.

Images are uint8 RGB arrays (H, W, 3); grids are (rows·H, cols·W, 3).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import secrets
from typing import Any, Callable, Optional, Union

import numpy as np
from PIL import Image

PathLike = Union[str, os.PathLike]


class WorkdirNotWritableError(PermissionError):
  """The workdir cannot be created or written to."""


class WorkdirNotEmptyError(FileExistsError):
  """The workdir already holds files and overwriting was not requested."""


def prepare_workdir(path: PathLike, overwrite: bool) -> pathlib.Path:
  """Creates the workdir, or checks that an existing one may be written to.

  Nothing is ever deleted here: with `overwrite=True` the run replaces the
  files it writes (atomically) and leaves every other file where it is.

  Args:
    path: the run's output folder (created with its parents if missing).
    overwrite: allow a non-empty folder.

  Returns:
    The folder as an absolute path.

  Raises:
    WorkdirNotEmptyError: the folder holds entries and `overwrite` is False.
    NotADirectoryError: `path` exists and is not a folder.
    WorkdirNotWritableError: the folder cannot be created or written to
      (checked here, before any compute).
  """
  workdir = pathlib.Path(path).expanduser().absolute()
  if workdir.exists() and not workdir.is_dir():
    raise NotADirectoryError(f"workdir {str(workdir)!r} exists and is not a "
                             "directory; nothing was changed")
  if workdir.is_dir():
    entries = sorted(p.name for p in workdir.iterdir())
    if entries and not overwrite:
      shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
      raise WorkdirNotEmptyError(
          f"workdir {str(workdir)!r} already holds {len(entries)} entries "
          f"({shown}); pass --overwrite to replace this run's outputs, or "
          "choose another --workdir. Nothing was changed.")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    # A real write: permissions, read-only mounts and full disks all show.
    probe = workdir / f".write_probe_{secrets.token_hex(4)}"
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    raise WorkdirNotWritableError(
        f"workdir {str(workdir)!r} cannot be written ({e.strerror or e}); "
        "choose another --workdir. Nothing was computed.") from None
  return workdir


def write_atomic(path: PathLike, write: Callable[[Any], None]) -> pathlib.Path:
  """Calls `write(binary_file)` on a temp file, then moves it to `path`.

  Readers never see half a file, and a failed write leaves `path` as it was.
  """
  target = pathlib.Path(path)
  # A hidden, unique name beside the target (same filesystem, so os.replace
  # is a rename); "xb" never clobbers and, unlike mkstemp's 0600, leaves the
  # file mode to the umask.
  tmp = target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
  try:
    with open(tmp, "xb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, target)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return target


def write_bytes_atomic(path: PathLike, data: bytes) -> pathlib.Path:
  """Writes bytes atomically."""
  return write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: PathLike, text: str) -> pathlib.Path:
  """Writes UTF-8 text atomically."""
  return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: PathLike, obj: Any) -> pathlib.Path:
  """Writes `obj` as indented, strict JSON (NaN/Inf rejected) atomically."""
  return write_text_atomic(
      path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def _check_image(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise TypeError(f"image must be uint8, got {image.dtype}")
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must be (H, W, 3) RGB, got {image.shape}")
  return image


def write_png_atomic(path: PathLike, image: np.ndarray) -> pathlib.Path:
  """Writes one (H, W, 3) uint8 RGB image as PNG, atomically."""
  pil = Image.fromarray(_check_image(image))  # uint8 (H, W, 3): RGB
  return write_atomic(path, lambda f: pil.save(f, format="PNG"))


def image_grid(images: np.ndarray, num_cols: Optional[int] = None,
               pad: int = 2, pad_value: int = 255) -> np.ndarray:
  """Tiles (N, H, W, 3) uint8 images row-major into one image.

  Args:
    images: (N, H, W, 3) uint8, N ≥ 1.
    num_cols: images per row (default: ceil(sqrt(N))).
    pad: pixels between and around tiles.
    pad_value: colour of the padding (all channels).

  Returns:
    (rows·(H+pad)+pad, cols·(W+pad)+pad, 3) uint8.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[0] == 0:
    raise ValueError(f"images must be (N, H, W, 3), N >= 1; got {images.shape}")
  _check_image(images[0])
  n, h, w, _ = images.shape
  cols = num_cols or int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / cols))
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3),
                 pad_value, np.uint8)
  for i, img in enumerate(images):
    r, c = divmod(i, cols)
    y, x = pad + r * (h + pad), pad + c * (w + pad)
    grid[y:y + h, x:x + w] = img
  return grid


def save_image_grid(path: PathLike, images: np.ndarray,
                    num_cols: Optional[int] = None) -> pathlib.Path:
  """`image_grid` of (N, H, W, 3) uint8 images, written as PNG atomically."""
  return write_png_atomic(path, image_grid(images, num_cols))
