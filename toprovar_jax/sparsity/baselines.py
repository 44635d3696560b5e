"""The FastVAR and SkipVAR baselines as static plans (SPEC §6).

Both are plans of the same language as ToProVAR's (ARCHITECTURES C.1, C.2),
so the sampler runs them with no special case:
  fastvar_plan   frequency scorer re-selected per sub-layer, cached restore
                 from the 24x24 scale, the last two scales not generated
  skipvar_plan   one SkipVAR action: skip the last K scales and/or drop
                 the unconditional branch from scale S on
  skipvar_action_plan  the same from its name, 'skipvar_skipK[_uncondS]'
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Optional, Tuple

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


# skip 48x48 and 64x64.
_FASTVAR_SCHEDULE = config_lib.square_schedule(config_lib.INFINITY_1M_SIDES)
_FASTVAR_CACHE_SIDE = 24
_FASTVAR_PRUNE_RATIO = {32: 0.4, 40: 0.5}
_FASTVAR_SKIPPED = 2
# Pruned blocks range(3, 28) of Infinity-2B's 32.
_FASTVAR_LAYERS_2B = (3, 28, 32)


def fastvar_layer_range(depth: int) -> Tuple[int, int]:
  """FastVAR's pruned blocks [start, stop) for a model of `depth` blocks.

  The official code prunes blocks 3..27 of 32 (range(3, 28)); other depths
  scale both ends proportionally and round half up (40 blocks: 4..34).
  """
  start, stop, ref = _FASTVAR_LAYERS_2B
  return (int(math.floor(start * depth / ref + 0.5)),
          int(math.floor(stop * depth / ref + 0.5)))


def fastvar_plan(cfg: config_lib.TransformerConfig) -> plan_lib.SparsityPlan:
  """FastVAR (csguoh/FastVAR, Infinity variant) as a plan (SPEC §6).

  Frequency scorer re-selected before every sub-layer, halves scored on their
  own, cached restoration from the 24x24 scale, S in the middle blocks at the
  32x32 (keep N - int(0.4 N) = 615) and 40x40 (keep 800) scales, and the last
  two scales not generated. The keep count follows the official
  `r = int(L * ratio)` (floor), kept = L - r.

  Args:
    cfg: an Infinity-style model with the 13-scale 1:1 1M schedule.

  Returns:
    The FastVAR plan for this model.

  Raises:
    PlanError: for any other schedule (FastVAR hard-codes its scales).
  """
  if tuple(cfg.schedule) != _FASTVAR_SCHEDULE:
    raise plan_lib.PlanError(
        f"FastVAR is defined only for the 13-scale 1:1 1M Infinity schedule "
        f"{[h for h, _ in _FASTVAR_SCHEDULE]}; model {cfg.name!r} has "
        f"{[list(hw) for hw in cfg.schedule]}", plan="fastvar",
        field="schedule")
  start, stop = fastvar_layer_range(cfg.depth)
  if not 0 < start < stop <= cfg.depth:
    raise plan_lib.PlanError(
        f"depth {cfg.depth} leaves no pruned block range", plan="fastvar",
        field="num_layers")
  sides = [h for h, _ in cfg.schedule]
  cache_from = sides.index(_FASTVAR_CACHE_SIDE)
  sparse_layers = "F" * start + "S" * (stop - start) + "F" * (cfg.depth - stop)
  num_generated = len(sides) - _FASTVAR_SKIPPED
  scales = []
  for s in range(num_generated):
    n = cfg.tokens_per_scale[s]
    ratio = _FASTVAR_PRUNE_RATIO.get(sides[s])
    if ratio is None:
      scales.append(plan_lib.dense_scale(n, cfg.depth))
      continue
    scales.append(plan_lib.ScalePlan(
        keep=n - int(n * ratio), layers=sparse_layers, probe_layer=None,
        scorer="frequency", entropy_from="probe", select="sublayer",
        share_cfg=False, restore="cached", cache_from=cache_from,
        guidance=True))
  return plan_lib.SparsityPlan(
      name="fastvar", schedule=tuple(cfg.schedule), num_layers=cfg.depth,
      exit_scale=num_generated, scales=tuple(scales))

