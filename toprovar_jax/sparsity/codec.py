"""The JSON form of a sparsity plan (SPEC §3): to and from text.

Parsing is data only (`json`, no eval): unknown and missing fields,
duplicate keys, non-standard constants (NaN, Infinity) and wrong types are
rejected with a `PlanError` naming the scale and the field. Whether the plan
is consistent and fits a model is `validation.validate_plan`'s job.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional, Tuple, Union

from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import validation


def _scale_to_dict(sp: plan_lib.ScalePlan) -> dict:
  return {k: getattr(sp, k) for k in plan_lib.SCALE_FIELDS}


def plan_to_dict(plan: plan_lib.SparsityPlan) -> dict:
  """The JSON-ready dict of a plan (lists instead of tuples)."""
  return {
      "name": plan.name,
      "schedule": [list(hw) for hw in plan.schedule],
      "num_layers": plan.num_layers,
      "exit_scale": plan.exit_scale,
      "scales": [_scale_to_dict(sp) for sp in plan.scales],
  }


def plan_to_json(plan: plan_lib.SparsityPlan) -> str:
  """Serialises a plan in the SPEC §3 JSON form.

  Field order is the documented one; each ScalePlan sits on one line so that
  plans diff line-per-scale. `plan_from_json(plan_to_json(p)) == p`.
  """
  d = plan_to_dict(plan)
  def dump(v):
    return json.dumps(v, separators=(", ", ": "))

  lines = ["{"]
  for key in ("name", "schedule", "num_layers", "exit_scale"):
    lines.append(f"  {json.dumps(key)}: {dump(d[key])},")
  lines.append('  "scales": [')
  rows = [f"    {dump(sd)}" for sd in d["scales"]]
  lines.append(",\n".join(rows))
  lines.append("  ]")
  lines.append("}")
  return "\n".join(lines) + "\n"


def _reject_duplicates(pairs):
  out = {}
  for k, v in pairs:
    if k in out:
      raise plan_lib.PlanError(f"duplicate key {k!r} in the plan JSON",
                               field=k)
    out[k] = v
  return out


def _reject_constant(name):
  # json accepts NaN / Infinity by default; a plan never holds floats.
  raise plan_lib.PlanError(f"non-standard JSON constant {name}")


def _check_keys(d: Mapping[str, Any], expected: Tuple[str, ...], *,
                plan: Optional[str], scale: Optional[int]) -> None:
  unknown = [k for k in d if k not in expected]
  if unknown:
    raise plan_lib.PlanError(
        f"unknown field; expected only {list(expected)}", plan=plan,
        scale=scale, field=str(unknown[0]))
  missing = [k for k in expected if k not in d]
  if missing:
    raise plan_lib.PlanError("missing field", plan=plan, scale=scale,
                             field=missing[0])


def plan_from_json(text_or_dict: Union[str, bytes, Mapping[str, Any]]
                   ) -> plan_lib.SparsityPlan:
  """Parses the SPEC §3 JSON form (text or an already-decoded dict).

  Parsing is data only (json, no eval). Unknown and missing fields, duplicate
  keys and wrong types are rejected; model-independent consistency and the
  match against a model are checked by `validate_plan`.

  Args:
    text_or_dict: JSON text, or the dict `json.loads` would give.

  Returns:
    The plan, built from tuples (hashable).

  Raises:
    PlanError: naming the scale (where there is one) and the field.
  """
  if isinstance(text_or_dict, (str, bytes, bytearray)):
    try:
      d = json.loads(text_or_dict, object_pairs_hook=_reject_duplicates,
                     parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
      raise plan_lib.PlanError(f"not valid JSON: {e}") from None
  else:
    d = text_or_dict
  if not isinstance(d, Mapping):
    raise plan_lib.PlanError(
        f"the plan must be a JSON object, got {type(d).__name__}")
  name = d.get("name")
  plan_label = name if isinstance(name, str) else None
  _check_keys(d, plan_lib.PLAN_FIELDS, plan=plan_label, scale=None)
  raw_schedule = d["schedule"]
  if not isinstance(raw_schedule, list):
    raise plan_lib.PlanError("must be a list of [h, w] pairs",
                             plan=plan_label, field="schedule")
  schedule = []
  for s, hw in enumerate(raw_schedule):
    if (not isinstance(hw, list) or len(hw) != 2
        or not all(validation.is_int(v) for v in hw)):
      raise plan_lib.PlanError(
          f"must be an [h, w] pair of ints, got {hw!r}", plan=plan_label,
          scale=s, field="schedule")
    schedule.append((hw[0], hw[1]))
  raw_scales = d["scales"]
  if not isinstance(raw_scales, list):
    raise plan_lib.PlanError("must be a list of ScalePlan objects",
                             plan=plan_label, field="scales")
  scales = []
  for s, sd in enumerate(raw_scales):
    if not isinstance(sd, Mapping):
      raise plan_lib.PlanError("must be a ScalePlan object", plan=plan_label,
                               scale=s, field="scales")
    _check_keys(sd, plan_lib.SCALE_FIELDS, plan=plan_label, scale=s)
    scales.append(plan_lib.ScalePlan(
        **{k: sd[k] for k in plan_lib.SCALE_FIELDS}))
  plan = plan_lib.SparsityPlan(
      name=name, schedule=tuple(schedule), num_layers=d["num_layers"],
      exit_scale=d["exit_scale"], scales=tuple(scales))
  validation.check_types(plan)
  return plan


def read_json_file(path: Union[str, os.PathLike], what: str, *,
                   field: Optional[str] = None) -> Any:
  """The parsed JSON of a plan, adaptive-spec or classifier file.

  Every failure names the file: unreadable (missing, a folder, no
  permission), not UTF-8 (with the byte offset), not JSON (with the line),
  NaN / Infinity constants, duplicate keys.

  Args:
    path: the file.
    what: how errors name it, e.g. "plan file", "adaptive spec".
    field: the config field the path came from, prefixed to errors.

  Raises:
    PlanError: "[field 'F': ]<what> '<path>': <problem>".
  """
  where = f"{what} {os.fspath(path)!r}"
  if field is not None:
    where = f"field {field!r}: {where}"
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise plan_lib.PlanError(
        f"{where}: cannot read: {e.strerror or e}") from None
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise plan_lib.PlanError(
        f"{where}: not UTF-8 text (byte {e.start}: {e.reason})") from None
  try:
    return json.loads(text, object_pairs_hook=_reject_duplicates,
                      parse_constant=_reject_constant)
  except json.JSONDecodeError as e:
    raise plan_lib.PlanError(f"{where}: not JSON: {e.msg} (line "
                             f"{e.lineno})") from None
  except plan_lib.PlanError as e:
    raise plan_lib.PlanError(f"{where}: {e}") from None
