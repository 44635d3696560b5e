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


def _is_infinity_template(schedule) -> bool:
  schedule = tuple(tuple(int(v) for v in hw) for hw in schedule)
  return any(tpl[:n] == schedule
             for tpl in config_lib.infinity_templates().values()
             for n in config_lib.INFINITY_BUDGETS.values())


def fastvar_plan(cfg: config_lib.TransformerConfig) -> plan_lib.SparsityPlan:
  """FastVAR (csguoh/FastVAR, Infinity variant) as a plan (SPEC §6).

  Frequency scorer re-selected before every sub-layer, halves scored on their
  own, cached restoration from the 24x24 scale, S in the middle blocks at the
  32x32 (keep N - int(0.4 N) = 615) and 40x40 (keep 800) scales, and the last
  two scales not generated. The keep count follows the official
  `r = int(L * ratio)` (floor), kept = L - r.

  Other official schedules (any of the 15 h/w templates, any budget) get the
  plan re-made by position from the last scale, as on the 1:1 1M schedule:
  the 4th and 3rd scales from the end are pruned (ratios 0.4, 0.5), the 5th
  from the end is the cache, the last two are not generated.

  Args:
    cfg: an Infinity-style model on an official template schedule.

  Returns:
    The FastVAR plan for this model.

  Raises:
    PlanError: for any other schedule (names the one the model has).
  """
  if not _is_infinity_template(cfg.schedule):
    raise plan_lib.PlanError(
        "FastVAR is defined only for the official Infinity h/w templates "
        "(any of the 15 ratios at 0.06M / 0.25M / 0.60M / 1M); model "
        f"{cfg.name!r} has {config_lib.describe_schedule(cfg.schedule)}: "
        f"{[list(hw) for hw in cfg.schedule]}", plan="fastvar",
        field="schedule")
  start, stop = fastvar_layer_range(cfg.depth)
  if not 0 < start < stop <= cfg.depth:
    raise plan_lib.PlanError(
        f"depth {cfg.depth} leaves no pruned block range", plan="fastvar",
        field="num_layers")
  num_scales = len(cfg.schedule)
  # Positions from the end: on the 1:1 1M schedule these are the 24x24
  # cache (8) and the 32x32 / 40x40 pruned scales (9, 10).
  cache_from = num_scales - 1 - _FASTVAR_SKIPPED - len(_FASTVAR_PRUNE_RATIO)
  ratios = {cache_from + 1 + i: r
            for i, r in enumerate(_FASTVAR_PRUNE_RATIO.values())}
  sparse_layers = "F" * start + "S" * (stop - start) + "F" * (cfg.depth - stop)
  num_generated = num_scales - _FASTVAR_SKIPPED
  scales = []
  for s in range(num_generated):
    n = cfg.tokens_per_scale[s]
    ratio = ratios.get(s)
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

