"""Static sparsity plans: what each (scale, layer) computes at generation time.

A `SparsityPlan` is the jit-static description of one sparse (or dense)
generation run (SPEC §3). It is a frozen, hashable dataclass built only from
tuples, strings, ints, bools and None, so it can be a `static_argnames`
argument: two equal plans hash equally and share one compiled sampler.

Dimension letters: S scales, s scale index (0-based), N_s tokens of scale s,
K_s kept tokens, L layers, l layer index (0-based; the paper counts from 1).

Layer letters in `ScalePlan.layers` (one per layer):
  F  full: the block runs on all N_s tokens and writes N_s K/V entries.
  S  sparse: the block runs on the K_s kept tokens only and writes K_s K/V.
  X  skip: the block is bypassed at this scale; no output, no K/V.

Everything here is pure Python and runs before tracing. What a plan means for
execution (KV-cache offsets and lengths, layer segments, runs of equal
letters per scale) is in `toprovar_jax/sampling/layout.py`.

The JSON form (files under `configs/plans/`) is parsed as data, never as code,
and every error names the scale and the field (SPEC §3 "Validation", §11).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
from typing import Any, Mapping, Optional, Tuple, Union

from toprovar_jax.models import config as config_lib

# Allowed values of the enumerated ScalePlan fields (SPEC §3).
LETTERS = frozenset("FSX")
SCORERS = ("entropy", "frequency", "none")
ENTROPY_SOURCES = ("probe", "previous")
SELECTS = ("scale", "sublayer")
RESTORES = ("passthrough", "cached")

# Named plans live beside the configs: <repo>/configs/plans/<name>.json.
PLANS_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs" / "plans"
# A named plan is a bare file stem; anything else is treated as a path, so a
# name can never climb out of PLANS_DIR.
_PLAN_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class PlanError(ValueError):
  """A plan is malformed or does not match the model.

  Attributes:
    scale: 0-based scale index the problem is at, or None for plan-level
      fields (name, num_layers, exit_scale, the number of scales).
    field: the offending field name, as in the JSON form.
  """

  def __init__(self, message: str, *, plan: Optional[str] = None,
               scale: Optional[int] = None, field: Optional[str] = None):
    self.plan = plan
    self.scale = scale
    self.field = field
    where = []
    if plan is not None:
      where.append(f"plan {plan!r}")
    if scale is not None:
      where.append(f"scale {scale}")
    if field is not None:
      where.append(f"field {field!r}")
    super().__init__(", ".join(where) + ": " + message if where else message)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScalePlan:
  """What one generated scale computes (SPEC §3).

  Attributes:
    keep: K_s, tokens kept in the S layers of this scale (1 <= K_s <= N_s).
    layers: one letter per layer, 'F' | 'S' | 'X' (see module docstring).
    probe_layer: an F layer whose self-attention entropy is recorded at this
      scale, or None.
    scorer: 'entropy' (ToProVAR: keep the K_s lowest prune tendencies),
      'frequency' (FastVAR: keep the K_s largest ||x_i - mean x||^2) or 'none'
      (only with no pruning at this scale).
    entropy_from: 'probe' (this scale's probe layer, which must precede the
      first S layer) or 'previous' (the previous scale's probe, area-resized).
      Read only when scorer is 'entropy'.
    select: 'scale' (one kept set for the whole scale) or 'sublayer' (re-chosen
      before every SA / CA / FFN sub-layer of an S layer; FastVAR).
    share_cfg: True: the cond and uncond halves use the set scored on the cond
      half; False: each half is scored and selected on its own.
    restore: 'passthrough' (a pruned token's stream passes S layers unchanged)
      or 'cached' (FastVAR: branch outputs of scale `cache_from`, area-resized,
      fill the pruned positions).
    cache_from: the earlier scale whose branch outputs 'cached' reuses.
    guidance: False: only the cond half runs and is sampled from (SkipVAR's
      branch drop). Once False it stays False to the last generated scale.
  """
  keep: int
  layers: str
  probe_layer: Optional[int] = None
  scorer: str = "none"
  entropy_from: str = "probe"
  select: str = "scale"
  share_cfg: bool = True
  restore: str = "passthrough"
  cache_from: Optional[int] = None
  guidance: bool = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class SparsityPlan:
  """A whole generation run, the jit static argument (SPEC §3).

  Attributes:
    name: label used in logs, results and error messages.
    schedule: (h, w) of every scale of the model (all S, also those not
      generated); must equal the model's schedule.
    num_layers: L; must equal the model's depth.
    exit_scale: scales >= exit_scale are not generated and the accumulated
      latent is decoded as is (FastVAR / SkipVAR), or None (all generated).
    scales: one ScalePlan per generated scale (exit_scale of them, else S).
  """
  name: str
  schedule: Tuple[Tuple[int, int], ...]
  num_layers: int
  exit_scale: Optional[int] = None
  scales: Tuple[ScalePlan, ...]

  @property
  def num_generated(self) -> int:
    """Number of scales that are generated (len(scales))."""
    return len(self.scales)

  @property
  def tokens_per_scale(self) -> Tuple[int, ...]:
    """N_s for every scale of the schedule (generated or not)."""
    return tuple(h * w for h, w in self.schedule)


# The field order of the JSON form (and of the dataclasses).
_PLAN_FIELDS = tuple(f.name for f in dataclasses.fields(SparsityPlan))
_SCALE_FIELDS = tuple(f.name for f in dataclasses.fields(ScalePlan))


# --------------------------------------------------------------------------
# Constructors.
# --------------------------------------------------------------------------


def _dense_scale(num_tokens: int, depth: int, **overrides) -> ScalePlan:
  return ScalePlan(keep=num_tokens, layers="F" * depth, **overrides)


def dense_plan(cfg: config_lib.TransformerConfig) -> SparsityPlan:
  """The all-F plan: every scale generated, every token in every layer."""
  return SparsityPlan(
      name="dense", schedule=tuple(cfg.schedule), num_layers=cfg.depth,
      exit_scale=None,
      scales=tuple(_dense_scale(n, cfg.depth) for n in cfg.tokens_per_scale))


def skipvar_plan(cfg: config_lib.TransformerConfig, *, skip_scales: int = 0,
                 drop_uncond_from: Optional[int] = None) -> SparsityPlan:
  """A SkipVAR action as a static plan (ARCHITECTURES C.2).

  Args:
    cfg: the model.
    skip_scales: number of final scales not generated (0..S-1).
    drop_uncond_from: first scale that runs the cond half only (no guidance),
      or None.

  Returns:
    The dense plan with that exit scale and guidance cut.
  """
  base = dense_plan(cfg)
  num_scales = len(cfg.schedule)
  if not 0 <= skip_scales < num_scales:
    raise PlanError(f"skip_scales={skip_scales} is outside [0, {num_scales})",
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


def fastvar_plan(cfg: config_lib.TransformerConfig) -> SparsityPlan:
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
    raise PlanError(
        f"FastVAR is defined only for the 13-scale 1:1 1M Infinity schedule "
        f"{[h for h, _ in _FASTVAR_SCHEDULE]}; model {cfg.name!r} has "
        f"{[list(hw) for hw in cfg.schedule]}", plan="fastvar",
        field="schedule")
  start, stop = fastvar_layer_range(cfg.depth)
  if not 0 < start < stop <= cfg.depth:
    raise PlanError(f"depth {cfg.depth} leaves no pruned block range",
                    plan="fastvar", field="num_layers")
  sides = [h for h, _ in cfg.schedule]
  cache_from = sides.index(_FASTVAR_CACHE_SIDE)
  sparse_layers = "F" * start + "S" * (stop - start) + "F" * (cfg.depth - stop)
  num_generated = len(sides) - _FASTVAR_SKIPPED
  scales = []
  for s in range(num_generated):
    n = cfg.tokens_per_scale[s]
    ratio = _FASTVAR_PRUNE_RATIO.get(sides[s])
    if ratio is None:
      scales.append(_dense_scale(n, cfg.depth))
      continue
    scales.append(ScalePlan(
        keep=n - int(n * ratio), layers=sparse_layers, probe_layer=None,
        scorer="frequency", entropy_from="probe", select="sublayer",
        share_cfg=False, restore="cached", cache_from=cache_from,
        guidance=True))
  return SparsityPlan(name="fastvar", schedule=tuple(cfg.schedule),
                      num_layers=cfg.depth, exit_scale=num_generated,
                      scales=tuple(scales))


# --------------------------------------------------------------------------
# JSON.
# --------------------------------------------------------------------------


def _scale_to_dict(sp: ScalePlan) -> dict:
  return {k: getattr(sp, k) for k in _SCALE_FIELDS}


def plan_to_dict(plan: SparsityPlan) -> dict:
  """The JSON-ready dict of a plan (lists instead of tuples)."""
  return {
      "name": plan.name,
      "schedule": [list(hw) for hw in plan.schedule],
      "num_layers": plan.num_layers,
      "exit_scale": plan.exit_scale,
      "scales": [_scale_to_dict(sp) for sp in plan.scales],
  }


def plan_to_json(plan: SparsityPlan) -> str:
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
      raise PlanError(f"duplicate key {k!r} in the plan JSON", field=k)
    out[k] = v
  return out


def _reject_constant(name):
  # json accepts NaN / Infinity by default; a plan never holds floats.
  raise PlanError(f"non-standard JSON constant {name}")


def _check_keys(d: Mapping[str, Any], expected: Tuple[str, ...], *,
                plan: Optional[str], scale: Optional[int]) -> None:
  unknown = [k for k in d if k not in expected]
  if unknown:
    raise PlanError(f"unknown field; expected only {list(expected)}",
                    plan=plan, scale=scale, field=str(unknown[0]))
  missing = [k for k in expected if k not in d]
  if missing:
    raise PlanError("missing field", plan=plan, scale=scale, field=missing[0])


def plan_from_json(text_or_dict: Union[str, bytes, Mapping[str, Any]]
                   ) -> SparsityPlan:
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
      raise PlanError(f"not valid JSON: {e}") from None
  else:
    d = text_or_dict
  if not isinstance(d, Mapping):
    raise PlanError(f"the plan must be a JSON object, got {type(d).__name__}")
  name = d.get("name")
  plan_label = name if isinstance(name, str) else None
  _check_keys(d, _PLAN_FIELDS, plan=plan_label, scale=None)
  raw_schedule = d["schedule"]
  if not isinstance(raw_schedule, list):
    raise PlanError("must be a list of [h, w] pairs", plan=plan_label,
                    field="schedule")
  schedule = []
  for s, hw in enumerate(raw_schedule):
    if (not isinstance(hw, list) or len(hw) != 2
        or not all(_is_int(v) for v in hw)):
      raise PlanError(f"must be an [h, w] pair of ints, got {hw!r}",
                      plan=plan_label, scale=s, field="schedule")
    schedule.append((hw[0], hw[1]))
  raw_scales = d["scales"]
  if not isinstance(raw_scales, list):
    raise PlanError("must be a list of ScalePlan objects", plan=plan_label,
                    field="scales")
  scales = []
  for s, sd in enumerate(raw_scales):
    if not isinstance(sd, Mapping):
      raise PlanError("must be a ScalePlan object", plan=plan_label, scale=s,
                      field="scales")
    _check_keys(sd, _SCALE_FIELDS, plan=plan_label, scale=s)
    scales.append(ScalePlan(**{k: sd[k] for k in _SCALE_FIELDS}))
  plan = SparsityPlan(name=name, schedule=tuple(schedule),
                      num_layers=d["num_layers"], exit_scale=d["exit_scale"],
                      scales=tuple(scales))
  _check_types(plan)
  return plan


# --------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------


def _is_int(v) -> bool:
  # bool is an int subclass; `true` must not pass as a layer index or count.
  return isinstance(v, int) and not isinstance(v, bool)


def _check_types(plan: SparsityPlan) -> None:
  """Field types, including tuple-ness (a list would make the plan unhashable
  and fail only later, inside jit)."""
  name = plan.name if isinstance(plan.name, str) else None
  if name is None:
    raise PlanError(f"must be a string, got {plan.name!r}", field="name")

  def err(msg, scale, field):
    return PlanError(msg, plan=name, scale=scale, field=field)

  if not isinstance(plan.schedule, tuple):
    raise err("must be a tuple of (h, w) tuples", None, "schedule")
  for s, hw in enumerate(plan.schedule):
    if (not isinstance(hw, tuple) or len(hw) != 2
        or not all(_is_int(v) and v > 0 for v in hw)):
      raise err(f"must be an (h, w) tuple of positive ints, got {hw!r}", s,
                "schedule")
  if not _is_int(plan.num_layers):
    raise err(f"must be an int, got {plan.num_layers!r}", None, "num_layers")
  if plan.exit_scale is not None and not _is_int(plan.exit_scale):
    raise err(f"must be an int or null, got {plan.exit_scale!r}", None,
              "exit_scale")
  if not isinstance(plan.scales, tuple):
    raise err("must be a tuple of ScalePlan", None, "scales")
  for s, sp in enumerate(plan.scales):
    if not isinstance(sp, ScalePlan):
      raise err(f"must be a ScalePlan, got {type(sp).__name__}", s, "scales")
    if not _is_int(sp.keep):
      raise err(f"must be an int, got {sp.keep!r}", s, "keep")
    if not isinstance(sp.layers, str):
      raise err(f"must be a string of F/S/X letters, got {sp.layers!r}", s,
                "layers")
    for field in ("probe_layer", "cache_from"):
      v = getattr(sp, field)
      if v is not None and not _is_int(v):
        raise err(f"must be an int or null, got {v!r}", s, field)
    for field, allowed in (("scorer", SCORERS),
                           ("entropy_from", ENTROPY_SOURCES),
                           ("select", SELECTS), ("restore", RESTORES)):
      v = getattr(sp, field)
      if v not in allowed:
        raise err(f"must be one of {list(allowed)}, got {v!r}", s, field)
    for field in ("share_cfg", "guidance"):
      v = getattr(sp, field)
      if not isinstance(v, bool):
        raise err(f"must be true or false, got {v!r}", s, field)


def validate_plan(plan: SparsityPlan,
                  cfg: config_lib.TransformerConfig) -> SparsityPlan:
  """Checks a plan against itself and against the model (SPEC §3).

  Args:
    plan: the plan.
    cfg: the model it will run on.

  Returns:
    The same plan (for chaining).

  Raises:
    PlanError: at the first problem, naming the scale and the field.
  """
  _check_types(plan)
  def err(msg, scale, field):
    return PlanError(msg, plan=plan.name, scale=scale, field=field)


  # --- Plan against the model. ---
  if plan.num_layers != cfg.depth:
    raise err(f"plan has {plan.num_layers} layers, model {cfg.name!r} has "
              f"depth {cfg.depth}", None, "num_layers")
  model_schedule = tuple(tuple(hw) for hw in cfg.schedule)
  for s, (got, want) in enumerate(zip(plan.schedule, model_schedule)):
    if got != want:
      raise err(f"plan has {list(got)}, model {cfg.name!r} has {list(want)}",
                s, "schedule")
  if len(plan.schedule) != len(model_schedule):
    raise err(f"plan has {len(plan.schedule)} scales, model {cfg.name!r} has "
              f"{len(model_schedule)}", None, "schedule")

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
    bad = sorted(set(sp.layers) - LETTERS)
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


# --------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------


def named_plans() -> Tuple[str, ...]:
  """Names of the plan files under configs/plans/ (without .json)."""
  if not PLANS_DIR.is_dir():
    return ()
  return tuple(sorted(p.stem for p in PLANS_DIR.glob("*.json")))


def load_plan(spec: Union[str, os.PathLike],
              cfg: config_lib.TransformerConfig) -> SparsityPlan:
  """Resolves `config.sparsity.plan` into a validated plan (SPEC §9).

  Args:
    spec: 'dense', 'fastvar', a path to a plan JSON file, or the name of a
      plan under configs/plans/ (e.g. 'infinity_2b_paper').
    cfg: the model; the plan is validated against it.

  Returns:
    The validated plan.

  Raises:
    PlanError: unknown name, unreadable file, malformed or mismatched plan.
  """
  spec_str = os.fspath(spec)
  if spec_str == "dense":
    return validate_plan(dense_plan(cfg), cfg)
  if spec_str == "fastvar":
    return validate_plan(fastvar_plan(cfg), cfg)
  if spec_str == "skipvar":
    raise PlanError("'skipvar' chooses its suffix plan per image at run time; "
                    "it is not one static plan (see skipvar_plan)",
                    field="plan")
  path = pathlib.Path(spec_str)
  if not (path.suffix == ".json" or os.sep in spec_str or path.exists()):
    if not _PLAN_NAME_RE.match(spec_str):
      raise PlanError(f"{spec_str!r} is not a plan name", field="plan")
    path = PLANS_DIR / f"{spec_str}.json"
    if not path.is_file():
      raise PlanError(
          f"no named plan {spec_str!r} under {PLANS_DIR}; known: "
          f"{['dense', 'fastvar', *named_plans()]}", field="plan")
  try:
    text = path.read_text(encoding="utf-8")
  except OSError as e:
    raise PlanError(f"cannot read plan file {str(path)!r}: {e}",
                    field="plan") from None
  return validate_plan(plan_from_json(text), cfg)
