"""The strict tree check every loader uses (pure numpy).

Official loaders are non-strict (Infinity's `load_state_dict(strict=False)`);
ours are strict: a tree of weights (converted, read from an npz-shard
export or from an orbax checkpoint's metadata) must have exactly the leaves
of the model's abstract tree (`jax.eval_shape` of its init), each with the
right shape, and the error lists every offender at once.

  ConversionError  missing / unexpected / mis-shaped keys, all listed
  flatten          nested dict -> {"a/b/c": leaf}
  check_against    a tree against the model's abstract tree
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np


class ConversionError(ValueError):
  """A checkpoint does not match the model: lists every bad key."""

  def __init__(self, *, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
               mismatched: Sequence[Tuple[str, tuple, tuple]] = (),
               context: str = ""):
    self.missing = sorted(missing)
    self.unexpected = sorted(unexpected)
    self.mismatched = sorted(mismatched)
    lines = [f"checkpoint does not match the model{(' (' + context + ')') if context else ''}:"]
    if self.missing:
      lines.append(f"  missing keys ({len(self.missing)}): {', '.join(self.missing)}")
    if self.unexpected:
      lines.append(f"  unexpected keys ({len(self.unexpected)}): {', '.join(self.unexpected)}")
    if self.mismatched:
      lines.append(f"  mis-shaped keys ({len(self.mismatched)}): " + ", ".join(
          f"{k} (got {g}, expected {e})" for k, g, e in self.mismatched))
    super().__init__("\n".join(lines))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
  out = {}
  for k, v in tree.items():
    name = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, Mapping):
      out.update(flatten(v, name))
    else:
      out[name] = v
  return out


def check_against(params: Mapping[str, Any], expected: Mapping[str, Any],
                  context: str = ""):
  """Compares a converted param tree with an abstract (eval_shape) tree.

  Raises ConversionError listing missing / unexpected / mis-shaped leaves, so
  a converter bug can never silently produce a partially filled model.
  """
  got, want = flatten(params), flatten(expected)
  missing = [k for k in want if k not in got]
  unexpected = [k for k in got if k not in want]
  mism = [(k, tuple(np.shape(got[k])), tuple(want[k].shape))
          for k in want if k in got and tuple(np.shape(got[k])) != tuple(want[k].shape)]
  if missing or unexpected or mism:
    raise ConversionError(missing=missing, unexpected=unexpected,
                          mismatched=mism, context=context)
