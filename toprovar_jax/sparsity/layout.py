"""Execution layout of a sparsity plan: KV-cache offsets, segments, runs.

Pure Python, before tracing. The sampler asks this module for the static
token offset at which each (scale, layer) writes its K/V, for per-layer
KV-cache lengths, for the layer segments that share one stacked cache and one
`lax.scan`, and for the runs of equal letters to execute at each scale.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

from toprovar_jax.models import config as config_lib
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import validation


class Run(NamedTuple):
  """Layers [start, stop) that run with one letter at one scale."""
  start: int
  stop: int
  letter: str


def tokens_written(plan: plan_lib.SparsityPlan, s: int, l: int) -> int:
  """K/V entries layer l writes at generated scale s (F: N_s, S: K_s, X: 0)."""
  sp = plan.scales[s]
  letter = sp.layers[l]
  if letter == "F":
    return plan.tokens_per_scale[s]
  if letter == "S":
    return sp.keep
  return 0


def kv_write_offsets(plan: plan_lib.SparsityPlan
                     ) -> Tuple[Tuple[int, ...], ...]:
  """Static cache offset at which each (scale, layer) writes its K/V.

  Returns:
    offsets[s][l] = sum over generated scales k < s of tokens_written(k, l),
    shape (num_generated, L).
  """
  out = []
  running = [0] * plan.num_layers
  for s in range(plan.num_generated):
    out.append(tuple(running))
    for l in range(plan.num_layers):
      running[l] += tokens_written(plan, s, l)
  return tuple(out)


def kv_cache_lengths(plan: plan_lib.SparsityPlan,
                     cfg: Optional[config_lib.TransformerConfig] = None
                     ) -> Tuple[int, ...]:
  """Per-layer KV-cache length: all K/V the layer writes over the run.

  Args:
    plan: the plan.
    cfg: optional; when given the plan is validated against it first.

  Returns:
    lengths[l] = sum over generated scales of tokens_written(s, l), len L.
  """
  if cfg is not None:
    validation.validate_plan(plan, cfg)
  return tuple(
      sum(tokens_written(plan, s, l) for s in range(plan.num_generated))
      for l in range(plan.num_layers))


def layer_segments(plan: plan_lib.SparsityPlan) -> Tuple[Tuple[int, int], ...]:
  """Maximal runs of consecutive layers with identical letter columns.

  Layers of one segment do the same thing at every generated scale, so they
  have the same cache length and write offsets: they share one stacked
  (layers, ...) KV cache and one `lax.scan` over their parameters.

  Returns:
    (start, stop) pairs covering [0, L) in order.
  """
  columns = [tuple(sp.layers[l] for sp in plan.scales)
             for l in range(plan.num_layers)]
  segments = []
  start = 0
  for l in range(1, plan.num_layers + 1):
    if l == plan.num_layers or columns[l] != columns[start]:
      segments.append((start, l))
      start = l
  return tuple(segments)


def runs_at_scale(plan: plan_lib.SparsityPlan, s: int, *,
                  split_at_probe: bool = False) -> Tuple[Run, ...]:
  """The runs of layers to execute at generated scale s.

  Maximal runs of one letter at scale s, split at segment boundaries, so every
  run lies inside one stacked cache. (Because a segment has one letter column,
  these are exactly the segments, labelled with their letter at s.)

  Args:
    plan: the plan.
    s: generated scale index.
    split_at_probe: also isolate this scale's probe layer as its own run, so
      the sampler can run it with the entropy-recording attention.

  Returns:
    Runs (start, stop, letter) covering [0, L) in order.
  """
  if not 0 <= s < plan.num_generated:
    raise plan_lib.PlanError(
        f"scale {s} is not generated (0..{plan.num_generated - 1})",
        plan=plan.name, scale=s, field="scales")
  letters = plan.scales[s].layers
  probe = plan.scales[s].probe_layer if split_at_probe else None
  runs = []
  for start, stop in layer_segments(plan):
    if probe is not None and start <= probe < stop:
      for a, b in ((start, probe), (probe, probe + 1), (probe + 1, stop)):
        if a < b:
          runs.append(Run(a, b, letters[a]))
    else:
      runs.append(Run(start, stop, letters[start]))
  return tuple(runs)
