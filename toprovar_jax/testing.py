"""Helpers shared by tests and the parity CLI (no test framework imports)."""

from __future__ import annotations

import os
import pathlib

import numpy as np

_REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def reference_dir() -> pathlib.Path:
  """Folder of the official-code golden files.

  CI places `shared/` beside the checkout, so the default is
  `<repo>/../shared/reference`; `TOPROVAR_REFERENCE_DIR` overrides it.
  """
  env = os.environ.get("TOPROVAR_REFERENCE_DIR")
  if env:
    return pathlib.Path(env)
  return _REPO_ROOT.parent / "shared" / "reference"


def load_reference(name: str) -> dict:
  """Merges `NAME.npz` and `NAME_vae.npz` (reference README "Loading")."""
  d = reference_dir()
  out = {}
  for fname in (f"{name}.npz", f"{name}_vae.npz"):
    p = d / fname
    if p.exists():
      with np.load(p) as z:
        out.update({k: z[k] for k in z.files})
  if not out:
    raise FileNotFoundError(f"no reference files for {name!r} under {d}")
  return out
