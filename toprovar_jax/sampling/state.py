"""What the scale loop carries from one scale to the next (STYLE.md §18).

`ScaleState` is everything a scale needs from the scales before it: the
next input tokens, the accumulated latent, the KV caches, the conditioning
rows, the previous probe entropy, the FastVAR branch store and what was
generated so far. The sampler's per-scale step maps a state to the next
one, so a run of scales [a, b) is a function of the state at a alone: a
prefix can stop at a decision scale and a suffix continue from its state.

Rows. With guidance the batch is doubled, rows [cond; uncond] (R = 2B);
SkipVAR's branch drop (`ScalePlan.guidance` False) keeps the conditional
half from then on (R = B), in one place: `drop_uncond`.

Dimension letters: B batch, R rows (2B guided, else B), N_s tokens of the
next scale, C width, L layers, L_seg layers of a segment, M cache capacity
of a segment, H heads, D head dim, T text tokens, V logits per token, d
bits, Hf x Wf the latent grid.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp

from toprovar_jax.models import transformer

Array = jax.Array
# Per layer segment: the stacked K and V caches, each (L_seg, R, M, H, D).
SegmentCache = Tuple[Array, Array]


@flax.struct.dataclass
class ScaleState:
  """The scale loop's carry: the state before scale `scale` runs.

  Attributes:
    x: (R, N_s, C) input tokens of scale `scale` (embedded, doubled while
      guided).
    latent: the accumulated latent: VAR f̂ (B, Hf, Wf, Cvae), Infinity the
      summed codes (B, Hf, Wf, d').
    caches: one SegmentCache per layer segment of the plan
      (`sparsity.layout.layer_segments`), M sized from the plan.
    cond: `transformer.Conditioning` of the R rows (cond, ada_in, x0, text,
      text_mask).
    text_kv: Infinity: the cross-attention K/V of every layer, each
      (L, R, T, H, D); VAR: None.
    text_lengths: Infinity: (R,) int32 valid text tokens per row; VAR: None.
    layer_params: per-layer copies of the block weights (L entries) for
      unrolled runs (`ExecutionConfig.unroll_tokens`), made at the first
      unrolled run; None before (or never).
    layer_text_kv: per-layer copies of text_kv (L entries of (R, T, H, D)
      pairs), made with layer_params; None otherwise.
    prev_entropy: (R, N_p) head-mean entropy of the last probe layer, at the
      last scale that had a probe (`entropy_from: previous`), or None.
    branch_store: {scale: {layer: branch outputs, each (R, N, C)}} of the
      scales a later scale restores from (FastVAR cached restore).
    tokens: per generated scale, its choices: VAR (B, N) int32, Infinity
      (B, N, d) int32 bits.
    logits: per generated scale, its guided logits (B, N, V) when
      `SamplingConfig.return_logits`, else ().
    entropy: per generated scale, (L, B, N) attention entropies when
      `SamplingConfig.record_entropy`, else ().
    scale: the next scale to run (static).
    batch: B (static).
    guided: whether rows are still [cond; uncond] (static).
    prev_hw: (h, w) grid of prev_entropy, or None (static).
    layer_finite: (L,) bool, the layers' outputs at the scale just run are
      finite (`ExecutionConfig.check_finite`), or None.
    finite: per generated scale, (L + 1,) bool: layer_finite and the logits.
  """
  x: Array
  latent: Array
  caches: Tuple[SegmentCache, ...]
  cond: transformer.Conditioning
  text_kv: Optional[Tuple[Array, Array]]
  text_lengths: Optional[Array]
  layer_params: Optional[Tuple[Any, ...]]
  layer_text_kv: Optional[Tuple[Any, ...]]
  prev_entropy: Optional[Array]
  branch_store: Dict[int, Dict[int, Tuple[Array, ...]]]
  tokens: Tuple[Array, ...]
  logits: Tuple[Array, ...]
  entropy: Tuple[Array, ...]
  scale: int = flax.struct.field(pytree_node=False)
  batch: int = flax.struct.field(pytree_node=False)
  guided: bool = flax.struct.field(pytree_node=False)
  prev_hw: Optional[Tuple[int, int]] = flax.struct.field(pytree_node=False,
                                                          default=None)
  layer_finite: Optional[Array] = None
  finite: Tuple[Array, ...] = ()

  @property
  def rows(self) -> int:
    """R: 2B while guided, else B."""
    return 2 * self.batch if self.guided else self.batch

  def drop_uncond(self) -> "ScaleState":
    """The state with only the conditional rows (SkipVAR's branch drop).

    Every row-indexed field keeps its first B rows: x, cond, the text K/V
    (row axis 1 of the stacks, 0 of the per-layer copies), text_lengths,
    the caches (row axis 1), prev_entropy and the branch store. The
    unconditional rows' K/V are gone, so guidance cannot come back (plan
    validation refuses it).
    """
    if not self.guided:
      return self
    b = self.batch
    half = lambda t: None if t is None else t[:b]
    return self.replace(
        x=self.x[:b],
        cond=jax.tree.map(half, self.cond),
        text_kv=(None if self.text_kv is None else
                 jax.tree.map(lambda t: t[:, :b], self.text_kv)),
        layer_text_kv=(None if self.layer_text_kv is None else
                       jax.tree.map(lambda t: t[:b], self.layer_text_kv)),
        text_lengths=half(self.text_lengths),
        caches=tuple((k[:, :b], v[:, :b]) for k, v in self.caches),
        prev_entropy=half(self.prev_entropy),
        branch_store=jax.tree.map(half, self.branch_store),
        guided=False)


# -- rows of a state (prefix / suffix programs, sampling.branching) ----------

# The row axis of every row-indexed field. Fields of R rows are [cond;
# uncond] while guided (rows b and b + B are one image); the others have B
# rows. layer_params holds weights, not rows.
_ROW_AXIS = dict(x=0, latent=0, caches=1, cond=0, text_kv=1, text_lengths=0,
                 layer_text_kv=0, prev_entropy=0, branch_store=0, tokens=0,
                 logits=0, entropy=1)


def _map_rows(states, fn, batch: int) -> ScaleState:
  """Applies fn(list of (cond part, uncond part or None), axis) -> array to
  every row-indexed leaf of `states` (all alike but for their batch)."""
  first = states[0]
  out = {}
  for name, axis in _ROW_AXIS.items():
    def leaf(*ts, axis=axis):
      parts = []
      for st, t in zip(states, ts):
        b = st.batch
        if st.guided and t.shape[axis] == 2 * b:
          parts.append((jax.lax.slice_in_dim(t, 0, b, axis=axis),
                        jax.lax.slice_in_dim(t, b, 2 * b, axis=axis)))
        else:
          parts.append((t, None))
      return fn(parts, axis)
    out[name] = jax.tree.map(leaf, *(getattr(s, name) for s in states))
  return first.replace(batch=batch, **out)


def take_rows(st: ScaleState, idx) -> ScaleState:
  """The state of images `idx` ((n,) ints in [0, B); repeats allowed): both
  halves of a guided image move together."""
  idx = jnp.asarray(idx, jnp.int32)

  def fn(parts, axis):
    (c, u), = parts
    c2 = jnp.take(c, idx, axis=axis)
    return c2 if u is None else jnp.concatenate(
        [c2, jnp.take(u, idx, axis=axis)], axis=axis)
  return _map_rows([st], fn, int(idx.shape[0]))


def concat_rows(states) -> ScaleState:
  """The images of several states (same program, same guidance) in order:
  [cond of all; uncond of all] while guided."""
  states = list(states)
  if len(states) == 1:
    return states[0]
  if len({s.guided for s in states}) != 1:
    raise ValueError("concat_rows: states differ in guidance")

  def fn(parts, axis):
    conds = [c for c, _ in parts]
    if parts[0][1] is None:
      return jnp.concatenate(conds, axis=axis)
    return jnp.concatenate(conds + [u for _, u in parts], axis=axis)
  return _map_rows(states, fn, sum(s.batch for s in states))
