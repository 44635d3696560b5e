"""How one of our arrays is judged against a reference array (pure numpy).

Every comparison returns a JSON-safe dict with a "pass" bool. Shapes are
compared before values: a shape mismatch is reported as such (`"shape":
[ours, theirs]`, pass false) and never broadcast into a number. Non-finite
values fail the comparison and are written as `null` with a `"non_finite"`
count, so the CLI's JSON line stays valid (`json.dumps(allow_nan=False)`).

  close         max |ours - ref| within an absolute tolerance
  exact         element-wise equality (ids, bits, buckets)
  close_real    `close` at the positions where a (B, L) mask is 1
  argmax_check  our argmax against the reference's, away from near-ties
  param_check   parameter counts
  finite_json   any result tree with non-finite floats made `null`

Tolerances are the reference README's §6 and §12 (fp32 port).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

LOGITS_TOL = 1e-4
LATENT_TOL = 1e-4
IMAGE_TOL = 2e-4
# README §6: the official Infinity logits went through a bf16 cast of the
# cross-attention inputs; an fp32 port is only bounded against them.
OFFICIAL_TF_LOGITS_TOL = 5e-3
OFFICIAL_GUIDED_LOGITS_TOL = 5e-2
TEXT_HIDDEN_TOL = 1e-4
MEAN_POOLED_TOL = 5e-5
SENTENCE_EMBEDDING_TOL = 1e-5

Check = Dict[str, Any]


def _pair(ours, ref) -> Tuple[np.ndarray, np.ndarray, Check]:
  """The two arrays, and a failed check if their shapes differ."""
  o, r = np.asarray(ours), np.asarray(ref)
  if o.shape != r.shape:
    return o, r, {"shape": [list(o.shape), list(r.shape)], "pass": False}
  return o, r, {}


def _non_finite(o: np.ndarray, r: np.ndarray) -> Check:
  """{} when both are finite, else a failed check counting the offenders."""
  n_o = int(np.size(o) - np.isfinite(o).sum()) if o.dtype.kind == "f" else 0
  n_r = int(np.size(r) - np.isfinite(r).sum()) if r.dtype.kind == "f" else 0
  if not n_o and not n_r:
    return {}
  return {"max_abs_err": None, "non_finite": {"ours": n_o, "reference": n_r},
          "pass": False}


def _max_abs(o: np.ndarray, r: np.ndarray) -> float:
  if not o.size:
    return 0.0
  return float(np.max(np.abs(o.astype(np.float64) - r.astype(np.float64))))


def close(ours, ref, tol: float, **extra) -> Check:
  """max |ours - ref| <= tol, for arrays of one shape.

  Returns:
    {"max_abs_err", "tol", "pass", **extra}; a shape mismatch gives
    {"shape": [ours, ref]} and non-finite values {"non_finite": counts}
    instead of "max_abs_err", both with pass false.
  """
  o, r, bad = _pair(ours, ref)
  bad = bad or _non_finite(o, r)
  if bad:
    return {**bad, "tol": tol, **extra}
  e = _max_abs(o, r)
  return {"max_abs_err": e, "tol": tol, "pass": e <= tol, **extra}


def exact(ours, ref, **extra) -> Check:
  """Element-wise equality; `mismatches` of `total` elements differ."""
  o, r, bad = _pair(ours, ref)
  if bad:
    return {**bad, "tol": 0.0, **extra}
  n = int(np.sum(o != r))
  # NaN != NaN, so a non-finite value is already a mismatch; only the
  # error size needs the JSON-safe spelling.
  non_finite = _non_finite(o, r)
  out = {"max_abs_err": None if non_finite else _max_abs(o, r), "tol": 0.0,
         "mismatches": n, "total": int(o.size),
         "pass": n == 0 and not non_finite}
  if non_finite:
    out["non_finite"] = non_finite["non_finite"]
  return {**out, **extra}


def close_real(ours, ref, mask, tol: float, padded_info: bool = True,
               **extra) -> Check:
  """`close` on (..., B, L, C) arrays at the positions where mask (B, L) is 1.

  Padded queries are computed in torch but compared loosely by the README
  (§7, §12); with `padded_info` their error is reported
  (`max_abs_err_padded_info`, null if non-finite), not judged.
  """
  o, r, bad = _pair(ours, ref)
  real = np.asarray(mask).astype(bool)
  if not bad and o.shape[-3:-1] != real.shape:
    bad = {"shape": [list(o.shape), list(r.shape)], "mask_shape":
           list(real.shape), "pass": False}
  if bad:
    return {**bad, "tol": tol, **extra}
  out = close(o[..., real, :], r[..., real, :], tol, **extra)
  if padded_info and not real.all():
    pad = close(o[..., ~real, :], r[..., ~real, :], math.inf)
    out["max_abs_err_padded_info"] = pad.get("max_abs_err")
  return out


def argmax_check(ours_logits, ref_logits, pairs: bool) -> Check:
  """Our argmax vs the reference's wherever its margin exceeds LOGITS_TOL.

  Args:
    ours_logits, ref_logits: (..., K) logits, or (..., 2d) bit-pair logits
      (index 2k + b is "bit k = b") with `pairs`.
  Returns:
    {"mismatches", "compared", "skipped_near_ties", "tol", "pass"}; a
    reference without a single decided position fails (nothing compared).
  """
  o, r, bad = _pair(ours_logits, ref_logits)
  bad = bad or _non_finite(o, r)
  if bad:
    return {**bad, "tol": LOGITS_TOL}
  if pairs:
    o, r = o.reshape(*o.shape[:-1], -1, 2), r.reshape(*r.shape[:-1], -1, 2)
  srt = np.sort(r, axis=-1)
  decided = srt[..., -1] - srt[..., -2] > LOGITS_TOL
  mism = int(np.sum((o.argmax(-1) != r.argmax(-1)) & decided))
  compared = int(decided.sum())
  return {"mismatches": mism, "compared": compared,
          "skipped_near_ties": int((~decided).sum()), "tol": LOGITS_TOL,
          "pass": mism == 0 and compared > 0}


def param_check(ours: int, theirs: int) -> Check:
  return {"ours": int(ours), "reference": int(theirs),
          "pass": int(ours) == int(theirs)}


def count(tree) -> int:
  """Number of scalars in a tree of arrays."""
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def finite_json(tree):
  """`tree` with every non-finite float replaced by None (strict JSON)."""
  if isinstance(tree, dict):
    return {k: finite_json(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [finite_json(v) for v in tree]
  if isinstance(tree, float) and not math.isfinite(tree):
    return None
  return tree


def nchw(x) -> np.ndarray:
  """(N, H, W, C) ours -> (N, C, H, W), the reference's layout."""
  return np.asarray(x).transpose(0, 3, 1, 2)


def nhwc(x) -> jax.Array:
  """(N, C, H, W) reference -> (N, H, W, C), our layout."""
  return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))
