"""SkipVAR's decision model as data: a logistic regression and its JSON.

SkipVAR (ARCHITECTURES C.2) classifies each image at a decision scale from
two features of small decodes, HF_Diff and HF_Ratio
(`sampling.policies.hf_features`), into an action: a suffix plan such as
'skipvar_skip2' (`baselines.skipvar_action_plan`). Its classifiers are
sklearn pickles for Infinity-2B; we fit our own on our model's samples
(`evaluation.branch_training`) and ship them as JSON
(`decisions_dir()`/<model>_skipvar.json):

  {"kind": "skipvar", "model": "emoji", "decision_scale": 10,
   "feature_scale": 3, "freq_ratio": 0.4,
   "classes": ["skipvar_skip0", "skipvar_skip1", ...],
   "mean": [F], "scale": [F], "weights": [[K] x F], "bias": [K],
   "ssim_target": 0.85, ...}

Pure numpy. Dimension letters: N samples, F features, K classes.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import math
import pathlib
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from toprovar_jax.sparsity import codec
from toprovar_jax.sparsity import plan as plan_lib


@dataclasses.dataclass(frozen=True)
class Logistic:
  """Multinomial logistic regression on standardised features (hashable).

  Attributes:
    mean, scale: (F,) the standardisation (x - mean) / scale.
    weights: F rows of K weights.
    bias: (K,).
  """
  mean: Tuple[float, ...]
  scale: Tuple[float, ...]
  weights: Tuple[Tuple[float, ...], ...]
  bias: Tuple[float, ...]

  @property
  def num_classes(self) -> int:
    return len(self.bias)

  def logits(self, x: np.ndarray) -> np.ndarray:
    """(N, F) features -> (N, K) logits."""
    z = (np.asarray(x, np.float64) - np.array(self.mean)) / np.array(
        self.scale)
    return z @ np.array(self.weights, np.float64).reshape(
        len(self.mean), -1) + np.array(self.bias)

  def predict(self, x: np.ndarray) -> np.ndarray:
    """(N, F) -> (N,) class indices (argmax; ties to the lower class)."""
    return np.argmax(self.logits(x), axis=1)


def fit_logistic(x: np.ndarray, y: np.ndarray, num_classes: int, *,
                 c: float = 1.0, steps: int = 3000,
                 lr: float = 0.5) -> Logistic:
  """Fits sklearn's objective, 0.5·|W|² + c·Σ cross-entropy, by full-batch
  gradient descent on standardised features (deterministic).

  Args:
    x: (N, F) features; y: (N,) labels in [0, num_classes).
    c: inverse regularisation strength (sklearn's C).
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.int64)
  if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
    raise ValueError(f"fit_logistic: need (N, F) features and (N,) labels, "
                     f"got {x.shape} and {y.shape}")
  if y.min() < 0 or y.max() >= num_classes:
    raise ValueError(f"fit_logistic: labels outside [0, {num_classes})")
  mean = x.mean(axis=0)
  scale = x.std(axis=0)
  scale = np.where(scale > 0, scale, 1.0)
  z = (x - mean) / scale
  n, f = z.shape
  onehot = np.eye(num_classes)[y]
  w = np.zeros((f, num_classes))
  b = np.zeros(num_classes)
  for _ in range(steps):
    logits = z @ w + b
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    g = (p - onehot) / n
    w -= lr * (z.T @ g + w / (c * n))
    b -= lr * g.sum(axis=0)
  return Logistic(mean=tuple(map(float, mean)), scale=tuple(map(float, scale)),
                  weights=tuple(tuple(map(float, r)) for r in w),
                  bias=tuple(map(float, b)))


def labels_from_ssim(ssim: np.ndarray, flops: np.ndarray,
                     target: float) -> np.ndarray:
  """SkipVAR's labels: per image, the cheapest action whose SSIM vs dense
  reaches `target` (the most expensive action when none does).

  Args:
    ssim: (K, N) SSIM of every action on every image.
    flops: (K,) FLOPs per image of each action.
  Returns:
    (N,) action indices.
  """
  ssim = np.asarray(ssim)
  order = np.argsort(np.asarray(flops), kind="stable")  # cheap first
  labels = np.full(ssim.shape[1], order[-1])
  for i in range(ssim.shape[1]):
    ok = [k for k in order if ssim[k, i] >= target]
    if ok:
      labels[i] = ok[0]
  return labels


@dataclasses.dataclass(frozen=True)
class SkipVarSpec:
  """A trained SkipVAR decision (hashable).

  Attributes:
    model: the model it was trained on.
    decision_scale: d; features come from the latents after scales d - 2
      and d - 1, the suffix runs [d, S).
    feature_scale: the scale whose grid the latents are resized to before
      the small decodes.
    freq_ratio: the FFT radius ratio of HF_Ratio.
    classes: the action (plan) name of each class.
    classifier: the fitted Logistic.
    info: anything else the JSON held (training record).
  """
  model: str
  decision_scale: int
  feature_scale: int
  freq_ratio: float
  classes: Tuple[str, ...]
  classifier: Logistic
  info: Tuple[Tuple[str, Any], ...] = ()


_FIELDS = ("model", "decision_scale", "feature_scale", "freq_ratio",
           "classes", "mean", "scale", "weights", "bias")


def _bad(where: str, field: str, message: str):
  return plan_lib.PlanError(f"{where}: field {field!r}: {message}")


def spec_from_dict(d: Mapping[str, Any], where: str = "skipvar") -> SkipVarSpec:
  """Parses the JSON object; every error names its field (PlanError)."""
  if not isinstance(d, Mapping):
    raise plan_lib.PlanError(f"{where}: must be a JSON object")
  if d.get("kind", "skipvar") != "skipvar":
    raise _bad(where, "kind", f"must be 'skipvar', got {d.get('kind')!r}")
  for f in _FIELDS:
    if f not in d:
      raise _bad(where, f, "missing")
  for f in ("decision_scale", "feature_scale"):
    if not isinstance(d[f], int) or isinstance(d[f], bool) or d[f] < 0:
      raise _bad(where, f, f"must be an int >= 0, got {d[f]!r}")
  classes = d["classes"]
  if (not isinstance(classes, list) or not classes
      or not all(isinstance(c, str) for c in classes)):
    raise _bad(where, "classes", "must be a non-empty list of plan names")
  k = len(classes)

  def vec(f, n):
    v = d[f]
    if (not isinstance(v, list) or len(v) != n or not all(
        isinstance(t, (int, float)) and math.isfinite(t) for t in v)):
      raise _bad(where, f, f"must be a list of {n} finite numbers")
    return tuple(float(t) for t in v)
  mean = vec("mean", len(d["mean"]) if isinstance(d["mean"], list) else -1)
  nf = len(mean)
  scale = vec("scale", nf)
  if any(s <= 0 for s in scale):
    raise _bad(where, "scale", "must be > 0")
  w = d["weights"]
  if not isinstance(w, list) or len(w) != nf:
    raise _bad(where, "weights", f"must be {nf} rows of {k} numbers")
  rows = []
  for r in w:
    if (not isinstance(r, list) or len(r) != k or not all(
        isinstance(t, (int, float)) and math.isfinite(t) for t in r)):
      raise _bad(where, "weights", f"must be {nf} rows of {k} numbers")
    rows.append(tuple(float(t) for t in r))
  fr = d["freq_ratio"]
  if not isinstance(fr, (int, float)) or not 0 < fr < 1:
    raise _bad(where, "freq_ratio", f"must be in (0, 1), got {fr!r}")
  info = tuple(sorted((key, json.dumps(v)) for key, v in d.items()
                      if key not in _FIELDS and key != "kind"))
  return SkipVarSpec(
      model=str(d["model"]), decision_scale=d["decision_scale"],
      feature_scale=d["feature_scale"], freq_ratio=float(fr),
      classes=tuple(classes),
      classifier=Logistic(mean=mean, scale=scale, weights=tuple(rows),
                          bias=vec("bias", k)), info=info)


def spec_to_dict(spec: SkipVarSpec,
                 extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """The JSON object of `spec` (extra keys, e.g. the training record)."""
  c = spec.classifier
  out = dict(kind="skipvar", model=spec.model,
             decision_scale=spec.decision_scale,
             feature_scale=spec.feature_scale, freq_ratio=spec.freq_ratio,
             features=["hf_diff", "hf_ratio"], classes=list(spec.classes),
             mean=list(c.mean), scale=list(c.scale),
             weights=[list(r) for r in c.weights], bias=list(c.bias))
  out.update(extra or {})
  return out


def load_spec(path) -> SkipVarSpec:
  """Reads a SkipVAR classifier JSON file (errors name the file and field)."""
  where = f"skipvar classifier {str(path)!r}"
  d = codec.read_json_file(path, "skipvar classifier")
  return spec_from_dict(d, where)


def decisions_dir() -> pathlib.Path:
  """The folder of the trained decisions shipped with the package
  (`<model>_skipvar.json`, `<model>_adaptive.json`)."""
  root = importlib.resources.files("toprovar_jax.sparsity")
  return pathlib.Path(str(root.joinpath("decisions")))


def default_feature_scale(schedule) -> int:
  """SkipVAR decodes at Infinity's 8x8 scale, 1/8 of the final 64x64 side:
  the scale whose side is nearest 1/8 of the final side (the larger on a
  tie)."""
  sides = [h for h, _ in schedule]
  target = sides[-1] / 8
  return min(range(len(sides)), key=lambda s: (abs(sides[s] - target), -s))


def default_decision_scale(num_scales: int) -> int:
  """SkipVAR decides after scale 9 of Infinity's 13 (it can then skip the
  last 3): d = S - 3."""
  return max(2, num_scales - 3)
