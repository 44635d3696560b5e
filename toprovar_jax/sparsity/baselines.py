"""The FastVAR and SkipVAR baselines as static plans (SPEC §6).

Both are plans of the same language as ToProVAR's (ARCHITECTURES C.1, C.2),
so the sampler runs them with no special case:
  fastvar_plan   frequency scorer re-selected per sub-layer, cached restore
                 from the 24x24 scale, the last two scales not generated;
                 other schedules / depths proportionally (fastvar_scales,
                 fastvar_layer_range)
  skipvar_plan   one SkipVAR action: skip the last K scales and/or drop
                 the unconditional branch from scale S on
  skipvar_action_plan  the same from its name, 'skipvar_skipK[_uncondS]'
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Dict, Optional, Tuple

import numpy as np

from toprovar_jax.models import config as config_lib
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import validation

# The names `skipvar_plan` gives its plans.
_SKIPVAR_ACTION_RE = re.compile(r"skipvar_skip(\d+)(?:_uncond(\d+))?")


def skipvar_plan(cfg: config_lib.TransformerConfig, *, skip_scales: int = 0,
                 drop_uncond_from: Optional[int] = None
                 ) -> plan_lib.SparsityPlan:
  """A SkipVAR action as a static plan (ARCHITECTURES C.2).

  Args:
    cfg: the model.
    skip_scales: number of final scales not generated (0..S-1).
    drop_uncond_from: first scale that runs the cond half only (no guidance),
      or None.

  Returns:
    The dense plan with that exit scale and guidance cut.
  """
  base = plan_lib.dense_plan(cfg)
  num_scales = len(cfg.schedule)
  if not 0 <= skip_scales < num_scales:
    raise plan_lib.PlanError(
        f"skip_scales={skip_scales} is outside [0, {num_scales})",
        plan="skipvar", field="exit_scale")
  exit_scale = num_scales - skip_scales if skip_scales else None
  scales = base.scales[:num_scales - skip_scales]
  if drop_uncond_from is not None:
    scales = tuple(
        dataclasses.replace(sp, guidance=s < drop_uncond_from)
        for s, sp in enumerate(scales))
  name = f"skipvar_skip{skip_scales}"
  if drop_uncond_from is not None:
    name += f"_uncond{drop_uncond_from}"
  return dataclasses.replace(base, name=name, exit_scale=exit_scale,
                             scales=scales)


# FastVAR's public code is hard-coded for the 1:1 1M Infinity template
# (ARCHITECTURES C.1): cache at 24x24, prune 40 % at 32x32 and 50 % at 40x40,


def skipvar_action_plan(name: str, cfg: config_lib.TransformerConfig
                        ) -> Optional[plan_lib.SparsityPlan]:
  """The validated `skipvar_plan` a name such as 'skipvar_skip1_uncond8'
  stands for ('skipvar_skipK[_uncondS]': skip the last K scales, drop the
  unconditional branch from scale S on), or None for any other name.

  Raises:
    PlanError: K or S do not fit the model.
  """
  m = _SKIPVAR_ACTION_RE.fullmatch(name)
  if not m:
    return None
  plan = skipvar_plan(cfg, skip_scales=int(m.group(1)),
                      drop_uncond_from=(int(m.group(2)) if m.group(2)
                                        else None))
  return validation.validate_plan(plan, cfg)


# skip 48x48 and 64x64. Other schedules take the same roles at the same
# fractions of the final side (`fastvar_scales`).
_FASTVAR_FINAL_SIDE = 64
_FASTVAR_CACHE_SIDE = 24
# Pruned fraction at each pruned side (linear in between, clipped outside).
_FASTVAR_PRUNE = ((32, 0.4), (40, 0.5))
# Sides from here on are not generated.
_FASTVAR_EXIT_SIDE = 48
# Pruned blocks range(3, 28) of Infinity-2B's 32.
_FASTVAR_LAYERS_2B = (3, 28, 32)


def _is_infinity_template(schedule) -> bool:
  """Whether `schedule` is one of the official h/w templates at a budget."""
  schedule = tuple(tuple(int(v) for v in hw) for hw in schedule)
  return any(tpl[:n] == schedule
             for tpl in config_lib.infinity_templates().values()
             for n in config_lib.INFINITY_BUDGETS.values())


def fastvar_scales(schedule) -> Tuple[int, int, Dict[int, float]]:
  """FastVAR's roles on any schedule: (cache scale, exit scale, {pruned
  scale: pruned fraction}).

  On the official Infinity h/w templates (any of the 15 ratios, any budget)
  the roles keep their positions from the end, as on the 1:1 1M schedule:
  the 5th scale from the end is the cache, the 4th and 3rd are pruned (0.4,
  0.5), the last two are not generated. Other schedules place the roles by
  side. Scales are placed by f = max(h, w) / the final scale's max(h, w), as
  Infinity's 1M template places them: the cache is the scale with f nearest
  24/64; scales with f >= 48/64 are not generated (the exit is the first of
  them); the scales between the cache and the exit are pruned, a fraction
  interpolated linearly in f between 0.4 at 32/64 and 0.5 at 40/64 (held
  outside). On Infinity's schedule: cache 24x24, prune 32x32 (0.4) and
  40x40 (0.5), exit at 48x48: the official code.

  Raises:
    PlanError: a schedule too short to hold a cache before the exit.
  """
  (s0, r0), (s1, r1) = _FASTVAR_PRUNE
  if _is_infinity_template(schedule) and len(schedule) >= 5:
    n = len(schedule)
    return n - 5, n - 2, {n - 4: r0, n - 3: r1}
  frac = [max(hw) / max(schedule[-1]) for hw in schedule]
  exit_scale = next(s for s, f in enumerate(frac)
                    if f >= _FASTVAR_EXIT_SIDE / _FASTVAR_FINAL_SIDE)
  ref = _FASTVAR_CACHE_SIDE / _FASTVAR_FINAL_SIDE
  cache = min(range(exit_scale), key=lambda s: (abs(frac[s] - ref), -s),
              default=None)
  if cache is None or exit_scale < 2:
    raise plan_lib.PlanError(
        f"schedule {[list(hw) for hw in schedule]} has no scale before "
        "FastVAR's exit (side >= 3/4 of the final side) to cache from",
        plan="fastvar", field="schedule")
  f0, f1 = s0 / _FASTVAR_FINAL_SIDE, s1 / _FASTVAR_FINAL_SIDE
  pruned = {s: float(np.clip(r0 + (r1 - r0) * (frac[s] - f0) / (f1 - f0),
                             r0, r1))
            for s in range(cache + 1, exit_scale)}
  return cache, exit_scale, pruned


def fastvar_layer_range(depth: int) -> Tuple[int, int]:
  """FastVAR's pruned blocks [start, stop) for a model of `depth` blocks.

  The official code prunes blocks 3..27 of 32 (range(3, 28)); other depths
  scale both ends proportionally and round half up (40 blocks: 4..34).
  """
  start, stop, ref = _FASTVAR_LAYERS_2B
  return (int(math.floor(start * depth / ref + 0.5)),
          int(math.floor(stop * depth / ref + 0.5)))


def fastvar_plan(cfg: config_lib.TransformerConfig) -> plan_lib.SparsityPlan:
  """FastVAR (csguoh/FastVAR) as a plan for any schedule and depth (SPEC §6).

  Frequency scorer re-selected before every sub-layer, halves scored on
  their own, cached restoration from the cache scale, S in the middle
  blocks (`fastvar_layer_range`) of the pruned scales, and the scales from
  the exit on not generated (`fastvar_scales`). On Infinity's 1M schedule
  with 32 blocks it is the official configuration: keep 615 of 1,024 at
  32x32 and 800 of 1,600 at 40x40, cache at 24x24, 48x48 and 64x64
  skipped. The keep count follows the official `r = int(L * ratio)`
  (floor), kept = L - r.

  Raises:
    PlanError: a depth without a pruned block range, or a schedule too
      short for the roles (field 'num_layers' / 'schedule').
  """
  start, stop = fastvar_layer_range(cfg.depth)
  if not 0 < start < stop <= cfg.depth:
    raise plan_lib.PlanError(
        f"depth {cfg.depth} leaves no pruned block range", plan="fastvar",
        field="num_layers")
  cache_from, num_generated, pruned = fastvar_scales(tuple(cfg.schedule))
  sparse_layers = "F" * start + "S" * (stop - start) + "F" * (cfg.depth - stop)
  scales = []
  for s in range(num_generated):
    n = cfg.tokens_per_scale[s]
    keep = n - int(n * pruned.get(s, 0.0))
    if keep == n:
      scales.append(plan_lib.dense_scale(n, cfg.depth))
      continue
    scales.append(plan_lib.ScalePlan(
        keep=keep, layers=sparse_layers, probe_layer=None,
        scorer="frequency", entropy_from="probe", select="sublayer",
        share_cfg=False, restore="cached", cache_from=cache_from,
        guidance=True))
  return plan_lib.SparsityPlan(
      name="fastvar", schedule=tuple(cfg.schedule), num_layers=cfg.depth,
      exit_scale=num_generated, scales=tuple(scales))
