"""A plan made for one Infinity schedule, on another (SPEC §3).

Plans are per schedule: K_s counts tokens of one (h, w) map. A launch at
another official h/w template (`models.config.at_resolution`) gets:

* `dense`, `fastvar` and `skipvar_skipK[_uncondS]`: re-made for the
  chosen schedule by their constructors (`sparsity.baselines`).
* A named or calibrated plan (JSON) made for a schedule with the same number
  of scales (the same pixel budget at another h/w ratio): mapped scale by
  scale by `map_plan`. Every field is kept; only K_s moves with N_s, to the
  same kept fraction (round(K_s · N'_s / N_s), clipped to [1, N'_s], and a
  dense scale stays dense).
* Any other plan: refused with an error that names the schedule the plan
  was made for and the one the model runs, and how to make one.

Dimension letters as in `models/config.py`.
"""

from __future__ import annotations

import dataclasses

from toprovar_jax.models import config as config_lib
from toprovar_jax.sparsity import plan as plan_lib


def mapped_keep(keep: int, n_from: int, n_to: int) -> int:
  """K_s on a map of n_to tokens at the kept fraction keep / n_from."""
  if keep >= n_from:
    return n_to
  return int(min(max(round(keep * n_to / n_from), 1), n_to))


def map_plan(plan: plan_lib.SparsityPlan,
             cfg: config_lib.TransformerConfig) -> plan_lib.SparsityPlan:
  """`plan` on `cfg.schedule` (see the module docstring).

  Returns:
    `plan` itself when the schedules are equal, the model is not Infinity,
    or the depths differ (validation names those), else the mapped plan
    (same name; still to be validated against `cfg`).

  Raises:
    PlanError: the schedules have different numbers of scales (field
      'schedule'; names both schedules).
  """
  want = tuple(tuple(int(v) for v in hw) for hw in cfg.schedule)
  have = tuple(tuple(int(v) for v in hw) for hw in plan.schedule)
  if have == want or cfg.style != "infinity" or plan.num_layers != cfg.depth:
    return plan
  if len(have) != len(want):
    raise plan_lib.PlanError(
        f"was made for {config_lib.describe_schedule(have)}, but model "
        f"{cfg.name!r} runs {config_lib.describe_schedule(want)}; a plan "
        "maps only onto a schedule with as many scales (another h/w at "
        "the same pixel budget). Make one for this schedule (calibration), "
        "or use 'dense', 'fastvar' or 'skipvar_skipK', which are built for "
        "any schedule", plan=plan.name, field="schedule")
  n_from = [h * w for h, w in have]
  n_to = [h * w for h, w in want]
  scales = tuple(
      dataclasses.replace(sp, keep=mapped_keep(sp.keep, n_from[s], n_to[s]))
      for s, sp in enumerate(plan.scales))
  return dataclasses.replace(plan, schedule=want, scales=scales)
