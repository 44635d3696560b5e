"""ToProVAR calibration: entropy statistics -> a static plan (SPEC §5).

The three decision levels, read from a dense run's `EntropyStatistics`:
  * scale: ρ_s (mean over images); D = the first scale s ≥ min_scale with
    ρ_s ≥ τ (direction 'rise') or ρ_s ≤ τ ('fall'); no crossing = no
    pruning (the paper's fallback). Scales < D stay dense.
  * layer: ϱ_l = median over images of σ1/σ2 of layer l's entropy map at
    the representative scale; R_l = exp(−β(ϱ_l − 1)). Global (ϱ_l ≥ ϱ*)
    layers stay F, Detail layers become S, or X where the gate keeps less
    than `skip_below` (5 %) of the scale's tokens of the layer on average. ϱ* = the geometric midpoint of
    the largest gap in sorted log ϱ (∞ counted as 1e6), or a config
    value; β = ln 2 / (ϱ* − 1) (R = ½ at the cut) unless given.
  * token: q_i = φ(s)·R_l·Ĥ_i, φ(s) = (s+1)/S, Ĥ_i = H_i / mean_j H_j;
    P_keep = 1 − clip(α_min + (α_max − α_min)·q_i, 0, 1); K_s = the mean
    expected kept count over images and Detail layers, rounded to a
    multiple of 8 (at least 8); K_s ≥ N_s leaves the scale dense.
  * entropy source per pruned scale: `probe` (the last Global layer before
    the first S layer) or `previous` (the previous scale's probe) when
    layer 0 is Detail; 'auto' picks between them.
When no layer is Global, the layer with the largest ϱ is made Global (the
conservative choice for ambiguous layers, PAPER §4.5).

Dimension letters: S scales, s scale index, L layers, N_s tokens.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

from toprovar_jax.models import config as config_lib
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import statistics as stats_lib
from toprovar_jax.sparsity import validation

DIRECTIONS = ("rise", "fall")
ENTROPY_FROM = ("auto", "probe", "previous")
_INF_CAP = 1e6


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibrationConfig:
  """Hyper-parameters of the three levels (defaults: SPEC §5, PAPER §4).

  Attributes:
    tau: τ of the scale rule.
    direction: 'rise' (D = first s with ρ_s ≥ τ) or 'fall' (ρ_s ≤ τ).
    min_scale: the earliest scale that may be pruned (D ≥ min_scale).
    rho_star: ϱ* (> 1), or 0 = the largest gap in sorted log ϱ.
    beta: β of R_l, or 0 = ln 2 / (ϱ* − 1).
    alpha_min, alpha_max: the gate's α (0 ≤ α_min ≤ α_max).
    skip_below: a Detail layer whose own expected kept count at a pruned
      scale is below this fraction of N_s is skipped there (X).
    entropy_from: 'auto' | 'probe' | 'previous'.
    name: the plan's name.
  """
  tau: float = 0.4
  direction: str = "rise"
  min_scale: int = 1
  rho_star: float = 0.0
  beta: float = 0.0
  alpha_min: float = 0.0
  alpha_max: float = 1.0
  skip_below: float = 0.05
  entropy_from: str = "auto"
  name: str = "calibrated"

  def __post_init__(self):
    def bad(field, msg):
      raise ValueError(f"calibration.{field}: {msg}")
    if not 0.0 <= self.tau <= 1.0:
      bad("tau", f"must be in [0, 1], got {self.tau}")
    if self.direction not in DIRECTIONS:
      bad("direction", f"{self.direction!r} is not one of {DIRECTIONS}")
    if self.min_scale < 1:
      bad("min_scale", f"must be >= 1, got {self.min_scale}")
    if self.rho_star != 0.0 and not self.rho_star > 1.0:
      bad("rho_star", f"must be > 1 (0 = largest gap), got {self.rho_star}")
    if self.beta < 0.0:
      bad("beta", f"must be >= 0 (0 = ln 2 / (rho_star - 1)), got "
          f"{self.beta}")
    if not 0.0 <= self.alpha_min <= self.alpha_max:
      bad("alpha_min", f"need 0 <= alpha_min <= alpha_max, got "
          f"{self.alpha_min}, {self.alpha_max}")
    if not 0.0 <= self.skip_below <= 1.0:
      bad("skip_below", f"must be in [0, 1], got {self.skip_below}")
    if self.entropy_from not in ENTROPY_FROM:
      bad("entropy_from", f"{self.entropy_from!r} is not one of "
          f"{ENTROPY_FROM}")


@dataclasses.dataclass(frozen=True)
class Calibration:
  """Every statistic and decision of one calibration (JSON: `to_json`)."""
  config: CalibrationConfig
  rho: Tuple[float, ...]
  depth_rise: Optional[int]
  depth_fall: Optional[int]
  depth: Optional[int]
  rep_scale: int
  ratios: Tuple[float, ...]
  rho_star: float
  beta: float
  relevance: Tuple[float, ...]
  global_layers: Tuple[int, ...]
  expected_kept: Tuple[Tuple[float, ...], ...]
  keep: Tuple[int, ...]
  plan: plan_lib.SparsityPlan

  def to_json(self) -> Dict[str, Any]:
    def num(v):
      return None if v is None or not math.isfinite(v) else float(v)
    return dict(
        config=dataclasses.asdict(self.config), rho=list(self.rho),
        depth_rise=self.depth_rise, depth_fall=self.depth_fall,
        depth=self.depth, rep_scale=self.rep_scale,
        ratios=[num(r) for r in self.ratios],
        ratios_infinite=[not math.isfinite(r) for r in self.ratios],
        rho_star=num(self.rho_star), beta=self.beta,
        relevance=list(self.relevance),
        global_layers=list(self.global_layers),
        expected_kept=[list(r) for r in self.expected_kept],
        keep=list(self.keep), layers=[sp.layers for sp in self.plan.scales])


def pruning_depth(rho: np.ndarray, tau: float, direction: str,
                  min_scale: int = 1) -> Optional[int]:
  """D = the first s ≥ min_scale with ρ_s ≥ τ ('rise') or ≤ τ ('fall')."""
  for s in range(min_scale, len(rho)):
    if (rho[s] >= tau) if direction == "rise" else (rho[s] <= tau):
      return s
  return None


def largest_gap_threshold(ratios: np.ndarray) -> float:
  """ϱ*: the geometric midpoint of the largest gap in sorted log ϱ (∞ as
  1e6); layers at or above it are Global. Needs two or more layers."""
  logs = np.sort(np.log(np.clip(np.asarray(ratios, np.float64), 1.0,
                                _INF_CAP)))
  if logs.size < 2 or logs[-1] == logs[0]:
    return float("inf")  # no gap: every layer Detail (then one forced)
  k = int(np.argmax(np.diff(logs)))
  return float(np.exp(0.5 * (logs[k] + logs[k + 1])))


def layer_relevance(ratios: np.ndarray, beta: float) -> np.ndarray:
  """R_l = exp(−β(ϱ_l − 1)) (0 for ϱ = ∞)."""
  r = np.asarray(ratios, np.float64)
  return np.exp(-beta * (r - 1.0))


def round_keep(expected: float, num_tokens: int) -> int:
  """K_s: `expected` rounded to a multiple of 8, at least 8, at most N_s."""
  k = max(8, int(math.floor(expected / 8.0 + 0.5)) * 8)
  return min(k, num_tokens)


def calibrate(stats: stats_lib.EntropyStatistics,
              model: config_lib.TransformerConfig,
              config: CalibrationConfig = CalibrationConfig()
              ) -> Calibration:
  """The plan and every decision behind it (module docstring)."""
  sched = tuple(tuple(hw) for hw in model.schedule)
  if stats.schedule != sched or stats.num_layers != model.depth:
    raise ValueError(f"stats: made for schedule {stats.schedule} x "
                     f"{stats.num_layers} layers, model {model.name!r} has "
                     f"{sched} x {model.depth}")
  num_scales, depth = len(sched), model.depth
  rho = stats.rho()
  d_rise = pruning_depth(rho, config.tau, "rise", config.min_scale)
  d_fall = pruning_depth(rho, config.tau, "fall", config.min_scale)
  d = d_rise if config.direction == "rise" else d_fall

  ratios = stats.median_ratios()
  rho_star = config.rho_star or largest_gap_threshold(ratios)
  is_global = ratios >= rho_star
  if not is_global.any():
    is_global[int(np.argmax(ratios))] = True
  beta = config.beta or (math.log(2.0) / (rho_star - 1.0)
                         if math.isfinite(rho_star) else 0.0)
  relevance = layer_relevance(ratios, beta)
  detail = [l for l in range(depth) if not is_global[l]]

  expected = np.zeros((num_scales, depth))
  for s in range(num_scales):
    phi = (s + 1) / num_scales
    for l in detail:
      expected[s, l] = stats.expected_kept(
          s, l, phi * relevance[l], config.alpha_min, config.alpha_max)
  tokens = model.tokens_per_scale
  keep = [tokens[s] for s in range(num_scales)]
  letters = ["F" * depth for _ in range(num_scales)]
  if d is not None and detail:
    for s in range(d, num_scales):
      k = round_keep(float(np.mean(expected[s, detail])), tokens[s])
      row = ["F" if is_global[l] else
             ("X" if expected[s, l] < config.skip_below * tokens[s] else "S")
             for l in range(depth)]
      if k >= tokens[s]:
        row = ["F" if c == "S" else c for c in row]
      keep[s] = k if "S" in row else tokens[s]
      letters[s] = "".join(row)
  plan = _plan(model, config, letters, keep, is_global)
  validation.validate_plan(plan, model)
  return Calibration(
      config=config, rho=tuple(float(v) for v in rho), depth_rise=d_rise,
      depth_fall=d_fall, depth=d, rep_scale=stats.rep_scale,
      ratios=tuple(float(r) for r in ratios), rho_star=float(rho_star),
      beta=float(beta), relevance=tuple(float(r) for r in relevance),
      global_layers=tuple(int(l) for l in np.flatnonzero(is_global)),
      expected_kept=tuple(tuple(float(v) for v in row) for row in expected),
      keep=tuple(keep), plan=plan)


def _plan(model, config, letters, keep, is_global) -> plan_lib.SparsityPlan:
  """The SparsityPlan of the per-scale letters and K_s, with probes."""
  depth = model.depth
  first_detail = int(np.argmin(is_global)) if not is_global.all() else depth
  source = config.entropy_from
  if source == "auto":
    source = "probe" if first_detail > 0 else "previous"
  if source == "probe" and first_detail == 0:
    raise ValueError("calibration.entropy_from: 'probe' needs a Global layer "
                     "before the first Detail layer, and layer 0 is Detail; "
                     "use 'previous' or 'auto'")
  last_global = int(np.flatnonzero(is_global)[-1])
  probe = first_detail - 1 if source == "probe" else last_global
  scales = []
  for s, (row, k) in enumerate(zip(letters, keep)):
    prunes = "S" in row
    needs_probe = prunes or (
        source == "previous" and s + 1 < len(letters) and "S" in letters[s + 1])
    scales.append(plan_lib.ScalePlan(
        keep=k, layers=row, probe_layer=probe if needs_probe else None,
        scorer="entropy" if prunes else "none",
        entropy_from=source if prunes else "probe"))
  return plan_lib.SparsityPlan(
      name=config.name, schedule=tuple(tuple(hw) for hw in model.schedule),
      num_layers=depth, exit_scale=None, scales=tuple(scales))
