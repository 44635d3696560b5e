"""Budget mode: the cheapest calibrated plan that meets a fidelity target.

SPEC §5 "Budget mode": given a target mean SSIM vs dense on the calibration
images, search τ, ϱ*, α_min and α_max for the plan with the fewest FLOPs
that meets it; also D_min, the earliest scale the τ rule may choose (where
ρ_s hovers near τ at every scale, as on the emoji model, τ alone cannot
move D).

  1. Every point of the grid (`SearchGrid`) is calibrated from the saved
     statistics (no model run: `sparsity.calibration.calibrate`); points
     that give an equal plan (the name aside) are one candidate, so an
     equal plan is generated and compiled once.
  2. Candidates are sorted by analytic FLOPs (`toprovar_jax.flops`), and a
     binary search over that order looks for the cheapest one whose mean
     SSIM meets the target: a candidate that meets it sends the search to
     the cheaper half, one that misses to the costlier half. That is exact
     when SSIM falls with the FLOP reduction and otherwise returns a plan
     that meets the target (never one that misses), found in about
     log2(candidates) generations; `max_evals` caps them.
  3. Every plan generated is a point of the frontier (`frontier.json`,
     `frontier.png`).
No candidate meeting the target leaves the dense plan (reported as such).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from absl import logging
import jax
import numpy as np

from toprovar_jax import flops as flops_lib
from toprovar_jax.metrics import image as image_metrics
from toprovar_jax.models import config as config_lib
from toprovar_jax.sampling import runner
from toprovar_jax.sparsity import calibration as calibration_lib
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import statistics as stats_lib


@dataclasses.dataclass(frozen=True)
class SearchGrid:
  """The values tried per hyper-parameter (rho_star 0 = largest gap;
  `global_counts` adds the cuts that keep exactly g layers Global;
  `min_scales`, the earliest prunable scale D_min (PAPER §4.3's clamp), ()
  = 1 and every scale of the second half of the schedule)."""
  taus: Tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6)
  min_scales: Tuple[int, ...] = ()
  rho_stars: Tuple[float, ...] = (0.0,)
  global_counts: Tuple[int, ...] = (1, 2, 3, 4, 6)
  alpha_mins: Tuple[float, ...] = (0.0, 0.2)
  alpha_maxs: Tuple[float, ...] = (0.5, 0.75, 1.0, 1.5, 2.0)


def cut_for_globals(ratios: np.ndarray, g: int) -> Optional[float]:
  """ϱ* that makes exactly the g layers of largest ϱ Global (the geometric
  midpoint below the g-th largest), or None where ties make it impossible
  or g is not in [1, L)."""
  r = np.sort(np.clip(np.asarray(ratios, np.float64), 1.0, 1e6))[::-1]
  if not 1 <= g < len(r) or r[g - 1] == r[g]:
    return None
  cut = math.sqrt(r[g - 1] * r[g])
  return cut if cut > 1.0 else None


def _key(plan: plan_lib.SparsityPlan):
  return dataclasses.replace(plan, name="")


@dataclasses.dataclass
class Candidate:
  """One distinct plan, the grid points that give it, and its result."""
  calibration: calibration_lib.Calibration
  flops: float
  points: List[Dict[str, float]]
  ssim: Optional[float] = None
  seconds: Optional[float] = None


def candidates(stats: stats_lib.EntropyStatistics,
               model: config_lib.TransformerConfig,
               base: calibration_lib.CalibrationConfig, grid: SearchGrid, *,
               text_tokens: int, name: str) -> List[Candidate]:
  """Distinct plans of the grid, sorted by FLOPs (cheapest first), the
  dense plan (nothing pruned) left out."""
  ratios = stats.median_ratios()
  stars = list(grid.rho_stars) + [
      c for c in (cut_for_globals(ratios, g) for g in grid.global_counts)
      if c is not None]
  num_scales = len(model.schedule)
  min_scales = grid.min_scales or (1,) + tuple(range(num_scales // 2,
                                                     num_scales))
  by_plan: Dict[Any, Candidate] = {}
  dense = _key(plan_lib.dense_plan(model))
  for tau, d_min, star, a0, a1 in itertools.product(
      grid.taus, min_scales, sorted(set(stars)), grid.alpha_mins,
      grid.alpha_maxs):
    if a0 > a1:
      continue
    cfg = dataclasses.replace(base, tau=tau, min_scale=d_min, rho_star=star,
                              alpha_min=a0, alpha_max=a1, name=name)
    cal = calibration_lib.calibrate(stats, model, cfg)
    key = _key(cal.plan)
    if key == dense:
      continue
    if key not in by_plan:
      by_plan[key] = Candidate(
          calibration=cal, points=[],
          flops=flops_lib.plan_flops(cal.plan, model,
                                     text_tokens=text_tokens).total)
    by_plan[key].points.append(dict(tau=tau, min_scale=d_min,
                                    rho_star=star, alpha_min=a0,
                                    alpha_max=a1))
  return sorted(by_plan.values(), key=lambda c: c.flops)


def search(cands: Sequence[Candidate], evaluate: Callable[[plan_lib.
                                                          SparsityPlan],
                                                         float], *,
           target: float, max_evals: int = 12) -> Optional[Candidate]:
  """Binary search over FLOP-sorted candidates (module docstring, step 2);
  `evaluate(plan)` returns its mean SSIM vs dense. Returns the cheapest
  candidate found that meets `target`, or None; every evaluated candidate
  has `ssim` and `seconds` set."""
  lo, hi, best, evals, spent = 0, len(cands) - 1, None, 0, 0.0
  while lo <= hi and evals < max_evals:
    mid = (lo + hi) // 2
    c = cands[mid]
    t0 = time.perf_counter()
    c.ssim = float(evaluate(c.calibration.plan))
    c.seconds = time.perf_counter() - t0
    evals += 1
    ok = c.ssim >= target
    if ok:
      best, hi = c, mid - 1
    else:
      lo = mid + 1
    spent += c.seconds
    left = min(max_evals - evals,
               math.ceil(math.log2(hi - lo + 2)) if lo <= hi else 0)
    logging.info("budget search %d: candidate %d/%d, %.3g GFLOP, SSIM "
                 "%.4f %s target %.3f (%.1f s); at most %d more, ETA %.0f s",
                 evals, mid + 1, len(cands), c.flops / 1e9, c.ssim,
                 ">=" if ok else "<", target, c.seconds, left,
                 left * spent / evals)
  return best


def frontier_record(cands: Sequence[Candidate], best: Optional[Candidate],
                    *, dense_flops: float, target: float) -> Dict[str, Any]:
  """JSON of every evaluated plan: FLOP reduction, SSIM, hyper-parameters,
  the decisions; which one was chosen."""
  tried = []
  for c in cands:
    if c.ssim is None:
      continue
    cal = c.calibration
    tried.append(dict(
        flops=c.flops, flop_speedup=dense_flops / c.flops, ssim=c.ssim,
        meets_target=c.ssim >= target, seconds=c.seconds,
        chosen=c is best, points=c.points, depth=cal.depth,
        global_layers=list(cal.global_layers), keep=list(cal.keep),
        layers=[sp.layers for sp in cal.plan.scales]))
  tried.sort(key=lambda t: t["flops"])
  return dict(target_ssim=target, num_candidates=len(cands),
              num_evaluated=len(tried), dense_flops=dense_flops,
              chosen=(None if best is None else
                      dict(flop_speedup=dense_flops / best.flops,
                           ssim=best.ssim, points=best.points)),
              plans=tried)


def ssim_evaluator(sampler, params, vae_params, conditions, reference, *,
                   seed: int, batch_size: int, cfg_scale: float, tau: float,
                   mesh: Optional[jax.sharding.Mesh] = None
                   ) -> Callable[[plan_lib.SparsityPlan], float]:
  """`evaluate(plan)`: mean SSIM (11x11 Gaussian, [0, 1] units) of the
  plan's images against `reference` (N, H, W, 3) uint8, the dense images of
  the same seeds; plain sampling (no entropy recorded), sharded on `mesh`
  (None = unsharded; `runner.generate_images`)."""
  sampling = dataclasses.replace(sampler.sampling, record_entropy=False)

  def evaluate(plan):
    out = runner.generate_images(
        dataclasses.replace(sampler, plan=plan, sampling=sampling), params,
        vae_params, conditions, seed=seed, batch_size=batch_size,
        cfg_scale=cfg_scale, tau=tau, mesh=mesh)
    return float(np.mean(image_metrics.ssim(
        out.images.astype(np.float32) / 255.0,
        np.asarray(reference, np.float32) / 255.0)))
  return evaluate


def budget_plan(stats: stats_lib.EntropyStatistics,
                model: config_lib.TransformerConfig,
                base: calibration_lib.CalibrationConfig,
                evaluate: Callable[[plan_lib.SparsityPlan], float], *,
                target: float, max_evals: int, text_tokens: int,
                grid: SearchGrid = SearchGrid()
                ) -> Tuple[calibration_lib.Calibration, Dict[str, Any]]:
  """Steps 1-3 of the module docstring: (the chosen calibration, the
  frontier record). Without a candidate that meets `target`, the
  calibration of `base` with the dense plan in place of its own."""
  name = f"calibrated_ssim{target:g}"
  cands = candidates(stats, model, base, grid, text_tokens=text_tokens,
                     name=name)
  best = search(cands, evaluate, target=target, max_evals=max_evals)
  dense = flops_lib.dense_flops(model, text_tokens=text_tokens).total
  record = frontier_record(cands, best, dense_flops=dense, target=target)
  if best is not None:
    return best.calibration, record
  logging.warning("No candidate meets SSIM %.3f: the plan is dense", target)
  cal = calibration_lib.calibrate(stats, model, base)
  dense_plan = dataclasses.replace(plan_lib.dense_plan(model), name=name)
  return dataclasses.replace(cal, plan=dense_plan, depth=None,
                             keep=tuple(model.tokens_per_scale)), record
