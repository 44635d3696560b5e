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

The rest of the wing (`toprovar_jax/sparsity/`), all pure Python before
tracing except `selection`:
  codec       the SPEC §3 JSON form (parsed as data, never as code)
  validation  a plan against itself and against the model
  baselines   FastVAR and SkipVAR as plan constructors
  named       `config.sparsity.plan` -> a plan: 'dense', 'fastvar', a named
              plan shipped under `sparsity/plans/`, or a JSON path
  layout      what a plan means for execution: KV-cache offsets and
              lengths, layer segments, runs of equal letters per scale
  selection   token scorers and the static-K kept set (pure jnp)
Every error names the plan, the scale and the field (SPEC §3 "Validation",
§11).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from toprovar_jax.models import config as config_lib

# Allowed values of the enumerated ScalePlan fields (SPEC §3).
LETTERS = frozenset("FSX")
SCORERS = ("entropy", "frequency", "none")
ENTROPY_SOURCES = ("probe", "previous")
SELECTS = ("scale", "sublayer")
RESTORES = ("passthrough", "cached")


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
PLAN_FIELDS = tuple(f.name for f in dataclasses.fields(SparsityPlan))
SCALE_FIELDS = tuple(f.name for f in dataclasses.fields(ScalePlan))


def dense_scale(num_tokens: int, depth: int, **overrides) -> ScalePlan:
  """One scale with every token in every layer (all F)."""
  return ScalePlan(keep=num_tokens, layers="F" * depth, **overrides)


def dense_plan(cfg: config_lib.TransformerConfig) -> SparsityPlan:
  """The all-F plan: every scale generated, every token in every layer."""
  return SparsityPlan(
      name="dense", schedule=tuple(cfg.schedule), num_layers=cfg.depth,
      exit_scale=None,
      scales=tuple(dense_scale(n, cfg.depth) for n in cfg.tokens_per_scale))

