"""Adaptive ToProVAR as data: a family of suffix plans and a threshold rule.

The paper decides the pruning depth D per image ("shallower scales for
simpler objects"); SPEC §5's adaptive mode does it with static programs: a
small family of plans (2-4, e.g. the same plan with pruning from different
scales D, `family`) that agree on scales [0, d), and at the decision scale
d each image picks one from its own entropy statistic

  r = mean over `statistic_scales` s of ρ_s(image),
  ρ_s(image) = fraction of the tokens of scale s whose entropy (head mean,
               then mean over the F layers) is below that scale's mean,

as plan k = number of thresholds <= r (thresholds ascending; the plans are
listed in the order the thresholds cut r into). `sampling.policies`
computes r inside the prefix program; `calibrate` picks the order and the
thresholds on training captions. The spec is a JSON file, selected with
`config.sparsity.plan = "adaptive:PATH"`:

  {"kind": "adaptive", "name": "emoji_adaptive", "decision_scale": 10,
   "statistic_scales": [7, 8, 9],
   "plans": ["emoji_default", "PATH/plan.json", {inline plan},
             "skipvar_skip1", ...],
   "thresholds": [0.47, ...], "record": {how it was calibrated}}

A plan is a plan spec (`named.load_plan`), a SkipVAR action name (an exit
depth), or a plan object; a relative path is read relative to the spec's
folder.
Every error names its field (one line, PlanError).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import pathlib
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from toprovar_jax.models import config as config_lib
from toprovar_jax.sparsity import baselines
from toprovar_jax.sparsity import codec
from toprovar_jax.sparsity import named
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import validation

MAX_PLANS = 4
_FIELDS = ("kind", "name", "decision_scale", "statistic_scales", "plans",
           "thresholds", "record")


@dataclasses.dataclass(frozen=True)
class AdaptiveSpec:
  """A resolved adaptive spec (hashable).

  Attributes:
    name: the method's name in results.
    decision_scale: d; the prefix runs scales [0, d).
    statistic_scales: the scales (< d) whose ρ_s make the statistic r.
    plans: K validated plans, in threshold order.
    thresholds: K - 1 ascending cut points of r.
  """
  name: str
  decision_scale: int
  statistic_scales: Tuple[int, ...]
  plans: Tuple[plan_lib.SparsityPlan, ...]
  thresholds: Tuple[float, ...]

  def choose(self, r: np.ndarray) -> np.ndarray:
    """(N,) statistics -> (N,) plan indices."""
    return np.searchsorted(np.asarray(self.thresholds), np.asarray(r),
                           side="right")


def _bad(where: str, field: str, message: str) -> plan_lib.PlanError:
  return plan_lib.PlanError(f"adaptive spec {where}: field {field!r}: "
                            f"{message}")


def _resolve_plan(entry: Any, i: int, folder: Optional[pathlib.Path],
                  cfg: config_lib.TransformerConfig, where: str
                  ) -> plan_lib.SparsityPlan:
  field = f"plans[{i}]"
  try:
    if isinstance(entry, Mapping):
      return validation.validate_plan(codec.plan_from_json(dict(entry)), cfg)
    if not isinstance(entry, str):
      raise _bad(where, field, "must be a plan name, a path or a plan object")
    action = baselines.skipvar_action_plan(entry, cfg)
    if action is not None:  # 'skipvar_skipK[_uncondS]': an exit depth
      return action
    if folder is not None and not os.path.isabs(entry):
      local = folder / entry
      if local.is_file():
        entry = str(local)
    return named.load_plan(entry, cfg)
  except plan_lib.PlanError as e:
    if str(e).startswith("adaptive spec"):
      raise
    raise _bad(where, field, str(e)) from None


def spec_from_dict(d: Any, cfg: config_lib.TransformerConfig, *,
                   where: str = "(inline)",
                   folder: Optional[pathlib.Path] = None) -> AdaptiveSpec:
  """Parses and resolves an adaptive spec object against the model."""
  if not isinstance(d, Mapping):
    raise plan_lib.PlanError(f"adaptive spec {where}: must be a JSON object")
  for key in d:
    if key not in _FIELDS:
      raise _bad(where, key, f"unknown field (known: {list(_FIELDS)})")
  for key in _FIELDS[1:-1]:  # "kind" and "record" (calibration) optional
    if key not in d:
      raise _bad(where, key, "missing")
  if d.get("kind", "adaptive") != "adaptive":
    raise _bad(where, "kind", f"must be 'adaptive', got {d['kind']!r}")
  if not isinstance(d["name"], str) or not d["name"]:
    raise _bad(where, "name", "must be a non-empty string")
  dsc = d["decision_scale"]
  if not validation.is_int(dsc) or not 1 <= dsc <= cfg.num_scales:
    raise _bad(where, "decision_scale", f"must be an int in [1, "
               f"{cfg.num_scales}] for {cfg.name}, got {dsc!r}")
  ss = d["statistic_scales"]
  if (not isinstance(ss, list) or not ss
      or not all(validation.is_int(s) and 0 <= s < dsc for s in ss)):
    raise _bad(where, "statistic_scales", f"must be a non-empty list of "
               f"scales in [0, {dsc}), got {ss!r}")
  plans = d["plans"]
  if not isinstance(plans, list) or not 2 <= len(plans) <= MAX_PLANS:
    raise _bad(where, "plans", f"must be a list of 2..{MAX_PLANS} plans")
  th = d["thresholds"]
  if (not isinstance(th, list) or len(th) != len(plans) - 1 or not all(
      isinstance(t, (int, float)) and not isinstance(t, bool)
      and math.isfinite(t) for t in th)):
    raise _bad(where, "thresholds", f"must be {len(plans) - 1} finite "
               f"numbers (one fewer than plans), got {th!r}")
  if any(b < a for a, b in zip(th, th[1:])):
    raise _bad(where, "thresholds", f"must be ascending, got {th}")
  resolved = tuple(_resolve_plan(p, i, folder, cfg, where)
                   for i, p in enumerate(plans))
  names = [p.name for p in resolved]
  if len(set(names)) != len(names):
    raise _bad(where, "plans", f"plan names must differ, got {names}")
  return AdaptiveSpec(name=d["name"], decision_scale=dsc,
                      statistic_scales=tuple(ss), plans=resolved,
                      thresholds=tuple(float(t) for t in th))


def load_spec(path, cfg: config_lib.TransformerConfig) -> AdaptiveSpec:
  """Reads an adaptive spec JSON file (see the module docstring)."""
  path = pathlib.Path(path)
  where = repr(str(path))
  d = codec.read_json_file(path, "adaptive spec")
  return spec_from_dict(d, cfg, where=where, folder=path.parent)


def spec_to_dict(spec: AdaptiveSpec, record: Optional[Dict[str, Any]] = None
                 ) -> Dict[str, Any]:
  """The JSON object of `spec` (plans inline), with an optional record."""
  out = dict(kind="adaptive", name=spec.name,
             decision_scale=spec.decision_scale,
             statistic_scales=list(spec.statistic_scales),
             plans=[codec.plan_to_dict(p) for p in spec.plans],
             thresholds=list(spec.thresholds))
  if record is not None:
    out["record"] = record
  return out


def first_difference(plans: Sequence[plan_lib.SparsityPlan]) -> int:
  """The first scale at which the plans differ (their latest possible
  decision scale)."""
  n = min(p.num_generated for p in plans)
  for s in range(n):
    if len({p.scales[s] for p in plans}) > 1:
      return s
  return n


def first_pruned(plan: plan_lib.SparsityPlan) -> int:
  """D of a plan: its first scale that is not all F (or its exit)."""
  for s, sp in enumerate(plan.scales):
    if set(sp.layers) != {"F"} or not sp.guidance:
      return s
  return plan.num_generated


def family(base: plan_lib.SparsityPlan, first_pruned: Sequence[int],
           cfg: config_lib.TransformerConfig
           ) -> Tuple[plan_lib.SparsityPlan, ...]:
  """`base` with scales < D made dense, for each D of `first_pruned`
  (named '<base>_D<D>'; D = S gives the dense plan with base's exit).

  Raises:
    PlanError: a variant does not validate (e.g. 'previous' entropy from a
      scale made dense).
  """
  out = []
  for dd in first_pruned:
    scales = tuple(
        plan_lib.dense_scale(cfg.tokens_per_scale[s], cfg.depth,
                             guidance=sp.guidance) if s < dd else sp
        for s, sp in enumerate(base.scales))
    out.append(validation.validate_plan(dataclasses.replace(
        base, name=f"{base.name}_D{dd}", scales=scales), cfg))
  return tuple(out)


def calibrate(stat: np.ndarray, ssim: np.ndarray, flops: np.ndarray, *,
              budget: float, grid: int = 41) -> Dict[str, Any]:
  """Order and thresholds with the highest mean SSIM at mean FLOPs <= budget.

  Plans are tried in FLOP order, cheap plans for low r ("low_cheap") or for
  high r ("high_cheap"); thresholds come from a grid of cut points between
  the sorted statistics (both ends included, so a plan may get no image).

  Args:
    stat: (N,) per-image statistic r of the training images.
    ssim: (K, N) SSIM vs dense of every plan on every image.
    flops: (K,) FLOPs per image of each plan.
    budget: mean FLOPs per image allowed.

  Returns:
    dict: order (K plan indices in threshold order), thresholds, direction,
    mean_ssim, mean_flops, and best_static (index, ssim, flops of the best
    single plan within the budget, or None).
  """
  stat = np.asarray(stat, np.float64)
  ssim = np.asarray(ssim, np.float64)
  flops = np.asarray(flops, np.float64)
  k = len(flops)
  srt = np.sort(stat)
  cuts = np.concatenate([[srt[0] - 1.0], (srt[1:] + srt[:-1]) / 2,
                         [srt[-1] + 1.0]])
  if len(cuts) > grid:
    cuts = cuts[np.unique(np.linspace(0, len(cuts) - 1, grid).round()
                          .astype(int))]
  cheap_first = np.argsort(flops, kind="stable")
  best = None
  for direction, order in (("low_cheap", cheap_first),
                           ("high_cheap", cheap_first[::-1])):
    for th in itertools.combinations_with_replacement(cuts, k - 1):
      pick = order[np.searchsorted(np.array(th), stat, side="right")]
      mf = flops[pick].mean()
      if mf > budget * (1 + 1e-9):
        continue
      ms = ssim[pick, np.arange(len(stat))].mean()
      key = (ms, -mf)
      if best is None or key > best[0]:
        best = (key, dict(order=[int(o) for o in order],
                          thresholds=[float(t) for t in th],
                          direction=direction, mean_ssim=float(ms),
                          mean_flops=float(mf)))
  if best is None:
    raise ValueError(f"no assignment fits the budget {budget:.4g} FLOPs "
                     f"(cheapest plan: {flops.min():.4g})")
  static = [(float(ssim[i].mean()), -float(flops[i]), i) for i in range(k)
            if flops[i] <= budget * (1 + 1e-9)]
  out = best[1]
  out["best_static"] = None
  if static:
    s, f, i = max(static)
    out["best_static"] = dict(index=int(i), ssim=s, flops=-f)
  return out
