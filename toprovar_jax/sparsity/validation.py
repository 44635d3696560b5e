"""Validation of a sparsity plan, against itself and against the model.

SPEC §3 "Validation": a plan that does not match the model (depth,
schedule, K_s out of range, bad letters, a missing or non-F probe,
`entropy_from: previous` without a previous probe, `cache_from` not earlier
or not F where needed, `none` with pruning, `guidance` turning back on)
fails with a `PlanError` naming the plan, the scale and the field. Types
are checked first, tuple-ness included: a list would make the plan
unhashable and fail only later, inside jit.
"""

from __future__ import annotations

from toprovar_jax.models import config as config_lib
from toprovar_jax.sparsity import plan as plan_lib


def is_int(v) -> bool:
  # bool is an int subclass; `true` must not pass as a layer index or count.
  return isinstance(v, int) and not isinstance(v, bool)


def check_types(plan: plan_lib.SparsityPlan) -> None:
  """Field types, including tuple-ness (a list would make the plan unhashable
  and fail only later, inside jit)."""
  name = plan.name if isinstance(plan.name, str) else None
  if name is None:
    raise plan_lib.PlanError(f"must be a string, got {plan.name!r}",
                             field="name")

  def err(msg, scale, field):
    return plan_lib.PlanError(msg, plan=name, scale=scale, field=field)

  if not isinstance(plan.schedule, tuple):
    raise err("must be a tuple of (h, w) tuples", None, "schedule")
  for s, hw in enumerate(plan.schedule):
    if (not isinstance(hw, tuple) or len(hw) != 2
        or not all(is_int(v) and v > 0 for v in hw)):
      raise err(f"must be an (h, w) tuple of positive ints, got {hw!r}", s,
                "schedule")
  if not is_int(plan.num_layers):
    raise err(f"must be an int, got {plan.num_layers!r}", None, "num_layers")
  if plan.exit_scale is not None and not is_int(plan.exit_scale):
    raise err(f"must be an int or null, got {plan.exit_scale!r}", None,
              "exit_scale")
  if not isinstance(plan.scales, tuple):
    raise err("must be a tuple of ScalePlan", None, "scales")
  for s, sp in enumerate(plan.scales):
    if not isinstance(sp, plan_lib.ScalePlan):
      raise err(f"must be a ScalePlan, got {type(sp).__name__}", s, "scales")
    if not is_int(sp.keep):
      raise err(f"must be an int, got {sp.keep!r}", s, "keep")
    if not isinstance(sp.layers, str):
      raise err(f"must be a string of F/S/X letters, got {sp.layers!r}", s,
                "layers")
    for field in ("probe_layer", "cache_from"):
      v = getattr(sp, field)
      if v is not None and not is_int(v):
        raise err(f"must be an int or null, got {v!r}", s, field)
    for field, allowed in (("scorer", plan_lib.SCORERS),
                           ("entropy_from", plan_lib.ENTROPY_SOURCES),
                           ("select", plan_lib.SELECTS),
                           ("restore", plan_lib.RESTORES)):
      v = getattr(sp, field)
      if v not in allowed:
        raise err(f"must be one of {list(allowed)}, got {v!r}", s, field)
    for field in ("share_cfg", "guidance"):
      v = getattr(sp, field)
      if not isinstance(v, bool):
        raise err(f"must be true or false, got {v!r}", s, field)


def validate_plan(plan: plan_lib.SparsityPlan,
                  cfg: config_lib.TransformerConfig) -> plan_lib.SparsityPlan:
  """Checks a plan against itself and against the model (SPEC §3).

  Args:
    plan: the plan.
    cfg: the model it will run on.

  Returns:
    The same plan (for chaining).

  Raises:
    PlanError: at the first problem, naming the scale and the field.
  """
  check_types(plan)
  def err(msg, scale, field):
    return plan_lib.PlanError(msg, plan=plan.name, scale=scale, field=field)


  # --- Plan against the model. ---
  if plan.num_layers != cfg.depth:
    raise err(f"plan has {plan.num_layers} layers, model {cfg.name!r} has "
              f"depth {cfg.depth}", None, "num_layers")
  model_schedule = tuple(tuple(hw) for hw in cfg.schedule)
  made_for = (f" (the plan was made for "
              f"{config_lib.describe_schedule(plan.schedule)}, the model "
              f"runs {config_lib.describe_schedule(model_schedule)})")
  for s, (got, want) in enumerate(zip(plan.schedule, model_schedule)):
    if got != want:
      raise err(f"plan has {list(got)}, model {cfg.name!r} has {list(want)}"
                + made_for, s, "schedule")
  if len(plan.schedule) != len(model_schedule):
    raise err(f"plan has {len(plan.schedule)} scales, model {cfg.name!r} has "
              f"{len(model_schedule)}" + made_for, None, "schedule")

  num_scales = len(plan.schedule)
  depth = plan.num_layers
  if plan.exit_scale is not None and not 1 <= plan.exit_scale < num_scales:
    raise err(f"exit_scale={plan.exit_scale} is outside [1, {num_scales - 1}]"
              f" (null generates all {num_scales} scales)", None, "exit_scale")
  expected = num_scales if plan.exit_scale is None else plan.exit_scale
  if len(plan.scales) != expected:
    raise err(f"has {len(plan.scales)} ScalePlans, expected {expected} (one "
              f"per generated scale; exit_scale={plan.exit_scale}, "
              f"S={num_scales})", None, "scales")

  # --- Every generated scale, fields in declaration order. ---
  tokens = plan.tokens_per_scale
  for s, sp in enumerate(plan.scales):
    n = tokens[s]
    if not 1 <= sp.keep <= n:
      raise err(f"K_s={sp.keep} is outside [1, N_s={n}]", s, "keep")
    if len(sp.layers) != depth:
      raise err(f"has {len(sp.layers)} letters, expected one per layer "
                f"({depth})", s, "layers")
    bad = sorted(set(sp.layers) - plan_lib.LETTERS)
    if bad:
      l = min(sp.layers.index(c) for c in bad)
      raise err(f"letter {sp.layers[l]!r} at layer {l}; allowed: F, S, X", s,
                "layers")
    first_sparse = sp.layers.find("S")
    prunes = first_sparse >= 0 and sp.keep < n

    if sp.probe_layer is not None:
      p = sp.probe_layer
      if not 0 <= p < depth:
        raise err(f"layer {p} is outside [0, {depth})", s, "probe_layer")
      if sp.layers[p] != "F":
        raise err(f"layer {p} is {sp.layers[p]!r}; a probe must be an F "
                  "layer (entropy over all N_s tokens)", s, "probe_layer")
    if sp.scorer == "none" and prunes:
      raise err(f"scorer 'none' but K_s={sp.keep} < N_s={n} in S layers "
                f"(first: layer {first_sparse}); choose 'entropy' or "
                "'frequency'", s, "scorer")
    if sp.scorer == "entropy":
      if sp.entropy_from == "probe":
        if sp.probe_layer is None:
          raise err("missing: scorer 'entropy' with entropy_from 'probe' "
                    "needs an F probe layer at this scale", s, "probe_layer")
        if first_sparse >= 0 and sp.probe_layer > first_sparse:
          raise err(f"layer {sp.probe_layer} comes after the first S layer "
                    f"({first_sparse}); entropy_from 'probe' needs the probe "
                    "before it", s, "probe_layer")
      elif s == 0:
        raise err("'previous' at the first scale: there is no previous "
                  "probe", s, "entropy_from")
      elif plan.scales[s - 1].probe_layer is None:
        raise err(f"'previous' needs a probe_layer at scale {s - 1}", s,
                  "entropy_from")
      if sp.select == "sublayer":
        # One probe gives one score map: re-selecting per sub-layer would pick
        # the same set, so the plan must say 'scale'.
        raise err("'sublayer' re-scores every sub-layer, which only the "
                  "'frequency' scorer does; use 'scale' with 'entropy'",
                  s, "select")

    if sp.restore == "cached":
      c = sp.cache_from
      if c is None:
        raise err("missing: restore 'cached' needs the scale whose branch "
                  "outputs are reused", s, "cache_from")
      if not 0 <= c < s:
        raise err(f"cache_from={c} is not an earlier scale (< {s})", s,
                  "cache_from")
      for l, letter in enumerate(sp.layers):
        if letter == "S" and plan.scales[c].layers[l] != "F":
          raise err(f"layer {l} is S here but {plan.scales[c].layers[l]!r} "
                    f"at scale {c}; cached restore needs full-map branch "
                    "outputs there (F)", s, "cache_from")
    elif sp.cache_from is not None:
      raise err(f"cache_from={sp.cache_from} is set but restore is "
                f"{sp.restore!r}; use null", s, "cache_from")

    if sp.guidance and s > 0 and not plan.scales[s - 1].guidance:
      raise err(f"guidance turns back on after scale {s - 1} dropped the "
                "uncond branch (its K/V were never computed)", s, "guidance")
  return plan

