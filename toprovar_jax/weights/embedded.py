"""The weights shipped inside the package (SPEC §8).

The emoji model's weights ship under `toprovar_jax/assets/<model>/` as
npz-shard exports (`weights.shards`) named "transformer" and "tokenizer";
`config.ckpt.* = "embedded:<model>"` selects them. Everything shipped for a
model (shards, manifests, README) stays within the limits below, checked by
`check_sizes` before `experiments/ship_weights.py` swaps a new set in.
"""

from __future__ import annotations

import importlib.resources
import pathlib
import re
from typing import Tuple

from toprovar_jax.weights import shards

# `config.ckpt.*` value that selects the packaged weights of a model.
EMBEDDED_PREFIX = "embedded:"
# Issue 4: "shipped weights <= 30 MB in total"; every file the package
# ships for a model counts (shards, manifests, README). Decimal megabytes.
MAX_TOTAL_BYTES = 30 * 10**6
# Largest single file (the limit training's export already keeps).
MAX_FILE_BYTES = shards.MAX_FILE_BYTES
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def embedded_dir(model_name: str) -> pathlib.Path:
  """Folder of the packaged weights of `model_name` (may not exist).

  Raises:
    shards.WeightsError: `model_name` is not a plain name (it could climb out of
      the assets folder).
  """
  if not _NAME_RE.match(model_name):
    raise shards.WeightsError(f"{model_name!r} is not an embedded-weights name")
  root = importlib.resources.files("toprovar_jax").joinpath("assets")
  return pathlib.Path(str(root)) / model_name


def embedded_names() -> Tuple[str, ...]:
  """Models with packaged weights (folders holding a transformer export)."""
  root = embedded_dir("_").parent
  if not root.is_dir():
    return ()
  return tuple(sorted(p.name for p in root.iterdir()
                      if shards.is_export(p, shards.TRANSFORMER)))


def check_sizes(paths, *, max_total: int = MAX_TOTAL_BYTES,
                max_file: int = MAX_FILE_BYTES) -> int:
  """Checks the shipping limits; returns the total size in bytes.

  Raises:
    FileNotFoundError: a path does not exist (named).
    shards.WeightsError: a file over `max_file` (named) or a total over
      `max_total`.
  """
  total = 0
  for path in paths:
    size = pathlib.Path(path).stat().st_size
    if size > max_file:
      raise shards.WeightsError(f"{path}: {size} bytes, over the "
                                f"{max_file}-byte limit of one shipped file")
    total += size
  if total > max_total:
    raise shards.WeightsError(f"{len(paths)} files total {total} bytes, over "
                              f"the {max_total}-byte limit of shipped weights")
  return total
