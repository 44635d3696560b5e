"""Plan lookup: `config.sparsity.plan` -> a validated plan (SPEC §9).

A spec is 'dense', 'fastvar', the name of a plan shipped with the package
(`toprovar_jax/sparsity/plans/<name>.json`, package data, so names resolve
in an installed package too), or a path to a plan JSON file. 'skipvar' is
refused: it chooses its suffix plan per image at run time
(`baselines.skipvar_plan` makes one static action).
"""

from __future__ import annotations

import importlib.resources
import os
import pathlib
import re
from typing import Tuple, Union

from toprovar_jax.models import config as config_lib
from toprovar_jax.sparsity import baselines
from toprovar_jax.sparsity import codec
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import reschedule
from toprovar_jax.sparsity import validation

# A named plan is a bare file stem; anything else is treated as a path, so a
# name can never climb out of the plans folder.
_PLAN_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def plans_dir() -> pathlib.Path:
  """The folder of the named plans shipped with the package."""
  root = importlib.resources.files("toprovar_jax.sparsity").joinpath("plans")
  return pathlib.Path(str(root))


def named_plans() -> Tuple[str, ...]:
  """Names of the plans shipped under `plans_dir()` (without .json)."""
  folder = plans_dir()
  if not folder.is_dir():
    return ()
  return tuple(sorted(p.stem for p in folder.glob("*.json")))


def load_plan(spec: Union[str, os.PathLike],
              cfg: config_lib.TransformerConfig) -> plan_lib.SparsityPlan:
  """Resolves `config.sparsity.plan` into a validated plan (SPEC §9).

  Args:
    spec: 'dense', 'fastvar', a SkipVAR action 'skipvar_skipK[_uncondS]',
      a path to a plan JSON file, or the name of a plan shipped under
      `plans_dir()` (e.g. 'infinity_2b_paper').
    cfg: the model; the plan is validated against it.

  Returns:
    The validated plan.

  Raises:
    PlanError: unknown name, unreadable file, malformed or mismatched plan.
  """
  spec_str = os.fspath(spec)
  if spec_str == "dense":
    return validation.validate_plan(plan_lib.dense_plan(cfg), cfg)
  if spec_str == "fastvar":
    return validation.validate_plan(baselines.fastvar_plan(cfg), cfg)
  if spec_str == "skipvar":
    raise plan_lib.PlanError(
        "'skipvar' chooses its suffix plan per image at run time; "
        "it is not one static plan (see baselines.skipvar_plan)",
        field="plan")
  # SkipVAR actions ('skipvar_skipK[_uncondS]'), built for any schedule.
  action = baselines.skipvar_action_plan(spec_str, cfg)
  if action is not None:
    return action
  path = pathlib.Path(spec_str)
  # A user's file is named in errors; a shipped plan by its name alone.
  user_file = path.suffix == ".json" or os.sep in spec_str or path.exists()
  if not user_file:
    if not _PLAN_NAME_RE.match(spec_str):
      raise plan_lib.PlanError(f"{spec_str!r} is not a plan name", field="plan")
    path = plans_dir() / f"{spec_str}.json"
    if not path.is_file():
      raise plan_lib.PlanError(
          f"no named plan {spec_str!r} under {plans_dir()}; known: "
          f"{['dense', 'fastvar', *named_plans()]}", field="plan")
  d = codec.read_json_file(path, "plan file", field="plan")
  try:
    # Made for another h/w at the same budget: mapped (reschedule.map_plan).
    plan = reschedule.map_plan(codec.plan_from_json(d), cfg)
    return validation.validate_plan(plan, cfg)
  except plan_lib.PlanError as e:
    if not user_file:
      raise
    # The file is named too: a launch may read several plan files.
    err = plan_lib.PlanError(f"plan file {str(path)!r}: {e}")
    err.plan, err.scale, err.field = e.plan, e.scale, e.field
    raise err from None

