"""Run outputs on disk: the workdir guard and atomic writes (SPEC §9, §11).

Every file a run produces is written to a temporary file in the same
directory and moved over the target with `os.replace`, which is atomic on
POSIX: a reader (or a crash) sees the old file or the new one, never half of
one. A workdir that already holds anything is refused unless the caller
passes `overwrite=True`, and the refusal touches nothing.

A run's outputs are also replaced as a set (`publish`): staged in a hidden
folder, the previous record (results.json) removed first, the previous
run's files removed, the new ones renamed into place and the record, which
lists them (`"outputs"`), written last. A record on disk therefore always
describes the files beside it.

Images are uint8 RGB arrays (H, W, 3); grids are (rows·H, cols·W, 3).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import secrets
import shutil
import tempfile
from typing import Any, Callable, Mapping, Optional, Set, Union

import numpy as np
from PIL import Image

PathLike = Union[str, os.PathLike]
# Writes one file's content to a binary file object (`write_atomic`).
Writer = Callable[[Any], None]


class WorkdirNotWritableError(PermissionError):
  """The workdir cannot be created or written to."""


class WorkdirNotEmptyError(FileExistsError):
  """The workdir already holds files and overwriting was not requested."""


def prepare_workdir(path: PathLike, overwrite: bool) -> pathlib.Path:
  """Creates the workdir, or checks that an existing one may be written to.

  Nothing is ever deleted here: with `overwrite=True` the run later
  replaces its previous run's outputs (`publish`: the files that run's
  record listed) and leaves every other file where it is.

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


def write_atomic(path: PathLike, write: Writer) -> pathlib.Path:
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


def json_bytes(obj: Any) -> bytes:
  """`obj` as indented, strict JSON (NaN/Inf rejected), UTF-8."""
  return (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode("utf-8")


def write_json_atomic(path: PathLike, obj: Any) -> pathlib.Path:
  """Writes `obj` as indented, strict JSON (NaN/Inf rejected) atomically."""
  return write_bytes_atomic(path, json_bytes(obj))


def _check_image(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise TypeError(f"image must be uint8, got {image.dtype}")
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must be (H, W, 3) RGB, got {image.shape}")
  return image


def png_writer(image: np.ndarray) -> Writer:
  """The Writer of one (H, W, 3) uint8 RGB image as PNG (checked now, so a
  bad image fails before anything is written; encoded when written)."""
  pil = Image.fromarray(_check_image(image))  # uint8 (H, W, 3): RGB
  return lambda f: pil.save(f, format="PNG")


def write_png_atomic(path: PathLike, image: np.ndarray) -> pathlib.Path:
  """Writes one (H, W, 3) uint8 RGB image as PNG, atomically."""
  return write_atomic(path, png_writer(image))


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


# --------------------------------------------------------------------------
# A run's outputs as one set (issue 11): staged, swapped, recorded last.
# --------------------------------------------------------------------------

# The key of a run record that lists every file published beside it.
OUTPUTS = "outputs"


def _hidden(record_name: str, what: str) -> str:
  """A hidden name of publish's own bookkeeping, e.g. .results.json.pending
  (hidden: never a run output, see `_check_name`)."""
  return f".{record_name}.{what}"


def _check_name(name: Any, record_name: str) -> str:
  """`name` if it is a plain, visible file name other than the record's.

  Only such names are ever written or removed: a path ('../x', 'a/b') or a
  hidden name (temp files, staging) in a record is not a run's output.
  """
  if (not isinstance(name, str) or not name or name.startswith(".")
      or pathlib.PurePath(name).name != name or name == record_name):
    raise ValueError(f"output name {name!r}: must be a plain file name (no "
                     f"folder, not hidden, not {record_name!r})")
  return name


def _listed(path: pathlib.Path, record_name: str) -> Set[str]:
  """The names a record (or publish's pending note) lists under "outputs";
  none when it is missing, unreadable or not a record of `publish`."""
  try:
    listed = json.loads(path.read_bytes()).get(OUTPUTS, [])
  except (OSError, ValueError, AttributeError):
    return set()
  names = set()
  for name in listed if isinstance(listed, list) else ():
    try:
      names.add(_check_name(name, record_name))
    except ValueError:
      pass  # not a file a publish wrote: it is never removed
  return names


def _fsync_dir(path: pathlib.Path) -> None:
  """Makes the renames in folder `path` durable before what follows (the
  record must not reach the disk before the files it lists)."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass  # a filesystem that cannot fsync folders: renames stay ordered
  finally:
    os.close(fd)


def publish(workdir: PathLike, files: Mapping[str, Union[bytes, Writer]], *,
            record: Mapping[str, Any],
            record_name: str = "results.json") -> pathlib.Path:
  """Replaces the previous run's outputs in `workdir` with `files`, as a set.

  1. Every file is written (and fsynced) in a hidden staging folder inside
     the workdir, so the moves below are renames on one filesystem.
  2. The previous record `record_name` is removed first: from here on a
     crash leaves no record claiming a set. Before that, the names that may
     lie in the workdir until the new record exists (the previous record's
     outputs and these) are noted in a hidden pending file, which the next
     publish reads too, so even a crashed run's files are cleaned up.
  3. The previous run's outputs that this set does not replace are removed:
     only names its record (or a pending note) listed under "outputs", so a
     file no run of ours wrote (a user's notes.txt) stays.
  4. The staged files are renamed into place.
  5. The record is written last, atomically; then the pending note and the
     staging folder are removed.

  A failure in 1 (a writer raising, a full disk), or a bad name or record,
  leaves the previous run exactly as it was and no staging folder behind.

  Args:
    workdir: an existing folder (`prepare_workdir`).
    files: {file name: its bytes, or a Writer of them (e.g. `png_writer`)};
      plain, visible names, not `record_name`.
    record: the JSON-ready run record; its "outputs" must list exactly the
      names of `files` (sorted), so that the next publish removes exactly
      these.
    record_name: the record's file name.

  Returns:
    The record's path.

  Raises:
    ValueError: a bad name, a record whose "outputs" is not the set, or a
      record that is not strict JSON (before anything is written).
    IsADirectoryError: a folder stands where an output goes (likewise).
    OSError, or what a writer raises: from writing.
  """
  workdir = pathlib.Path(workdir)
  names = sorted(_check_name(n, record_name) for n in files)
  listed = record.get(OUTPUTS)
  if (not isinstance(listed, (list, tuple))
      or sorted(listed, key=str) != names):
    raise ValueError(f"record[{OUTPUTS!r}] must list the published files "
                     f"{names}; got {listed!r}")
  for name in names:
    path = workdir / name
    if path.is_dir() and not path.is_symlink():
      raise IsADirectoryError(f"{str(path)!r} is a folder; nothing was "
                              "changed")
  record_bytes = json_bytes(dict(record))  # NaN fails here, not at step 5
  record_path = workdir / record_name
  pending = workdir / _hidden(record_name, "pending")
  staging_prefix = _hidden(record_name, "staging-")
  for old in workdir.glob(staging_prefix + "*"):
    shutil.rmtree(old, ignore_errors=True)  # a killed publish's leftovers
  staging = pathlib.Path(tempfile.mkdtemp(prefix=staging_prefix, dir=workdir))
  try:
    for name in names:  # 1. stage
      content = files[name]
      with open(staging / name, "xb") as f:
        if isinstance(content, (bytes, bytearray, memoryview)):
          f.write(content)
        else:
          content(f)
        f.flush()
        os.fsync(f.fileno())
    # 2. The previous record goes first (after the pending note).
    stale = _listed(record_path, record_name) | _listed(pending, record_name)
    write_bytes_atomic(pending, json_bytes({OUTPUTS: sorted(stale.union(
        names))}))
    record_path.unlink(missing_ok=True)
    for name in sorted(stale.difference(names)):  # 3. previous outputs
      path = workdir / name
      if path.is_symlink() or path.is_file():
        path.unlink()
    for name in names:  # 4. into place
      os.replace(staging / name, workdir / name)
    _fsync_dir(workdir)
    write_bytes_atomic(record_path, record_bytes)  # 5. the record, last
    pending.unlink()
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  _fsync_dir(workdir)
  return record_path
