"""Logical axis names of the transformer and their mapping to mesh axes.

The one place where the model's dimensions are named for sharding (STYLE.md
§9.22; maxtext's `common_types` idea). Model code names the dimensions of an
activation with the constants below (`constrain(x, (BATCH, None, HEADS,
None))`) and never a mesh axis; `DEFAULT_RULES` maps logical names to mesh
axes: rows over `data`, attention heads and the FFN hidden dimension over
`model` (Megatron-style tensor parallelism: the q / k / v and FFN-in
projections are split by output column, the attention-out and FFN-out
projections by input row, so each block needs one all-reduce after each
of them, which XLA's SPMD partitioner inserts).

`constrain` is the identity unless a rules context is active
(`axis_rules(mesh, rules)`, entered by `toprovar_jax.sharding` while it
traces a sharded program): models stay pure and run unchanged without a
mesh. Flax's own `nn.with_logical_constraint` is not used because it is a
no-op on CPU, where the tests run.

`param_axes` gives every parameter of `transformer.init_params` its
logical axes (the stacked block parameters have a leading LAYERS axis).
The fused q|k|v (self-attention) and k|v (cross-attention) kernels
(C, P·H·D) are kept whole in storage: a contiguous split of their columns
would not fall on head boundaries. Their layers reshape them to
(C, P, H, D) and constrain H, so each device computes only its heads'
projections (`HeadsDense`).

Dimension letters: B batch, N tokens, C width, H heads, D head dim, F FFN
hidden, L layers, P fused parts (3 for q|k|v, 2 for k|v).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

# Logical axis names (no mesh axis names appear in model code).
BATCH = "batch"      # rows of a batch (images, and their CFG twins)
LAYERS = "layers"    # the stacked layer axis of block parameters / caches
EMBED = "embed"      # model width C
HEADS = "heads"      # attention heads H, or a flat H·D dimension
MLP = "mlp"          # FFN hidden F

# Logical name -> mesh axis (None = replicated). Mesh axes that the mesh
# lacks are dropped, so the same rules serve a data-only mesh.
DEFAULT_RULES: Tuple[Tuple[str, Optional[str]], ...] = (
    (BATCH, "data"), (HEADS, "model"), (MLP, "model"), (EMBED, None),
    (LAYERS, None))

Rules = Sequence[Tuple[str, Optional[str]]]
_CONTEXT: contextvars.ContextVar = contextvars.ContextVar(
    "toprovar_axis_rules", default=None)


def spec(names: Sequence[Optional[str]], rules: Rules,
         mesh_axes: Sequence[str]) -> PartitionSpec:
  """Logical names (one per dimension, None = unsharded) -> PartitionSpec.

  A name maps to its rule's mesh axis when the mesh has that axis, else to
  None. Raises ValueError for a name without a rule.
  """
  table = dict(rules)
  out = []
  for name in names:
    if name is None:
      out.append(None)
      continue
    if name not in table:
      raise ValueError(f"logical axis {name!r} has no rule; rules: "
                       f"{sorted(table)}")
    axis = table[name]
    out.append(axis if axis in mesh_axes else None)
  return PartitionSpec(*out)


@contextlib.contextmanager
def axis_rules(mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES):
  """While active, `constrain` places activations on `mesh` by `rules`."""
  token = _CONTEXT.set((mesh, tuple(rules)))
  try:
    yield
  finally:
    _CONTEXT.reset(token)


def active_mesh() -> Optional[jax.sharding.Mesh]:
  """The mesh of the active `axis_rules` context, or None."""
  ctx = _CONTEXT.get()
  return None if ctx is None else ctx[0]


def constrain(x, names: Sequence[Optional[str]]):
  """`with_sharding_constraint` of x by logical names, or x itself when no
  `axis_rules` context is active (or its mesh has one device)."""
  ctx = _CONTEXT.get()
  if ctx is None or ctx[0].size == 1:
    return x
  mesh, rules = ctx
  if len(names) != x.ndim:
    raise ValueError(f"{len(names)} axis names {tuple(names)} for an array "
                     f"of shape {x.shape}")
  return jax.lax.with_sharding_constraint(
      x, NamedSharding(mesh, spec(names, rules, mesh.axis_names)))


class HeadsDense(nn.Module):
  """A bias-free Dense (C -> P·H·D) whose output is split by head.

  Same parameter as `nn.Dense(P·H·D, use_bias=False)` ("kernel" (C, P·H·D),
  LeCun-normal init), applied as (C, P, H, D) with H constrained to HEADS:
  under tensor parallelism each device computes its heads' columns only.

  Returns (B, N, P, H, D) in `dtype`.
  """
  parts: int
  heads: int
  head_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (c, self.parts * self.heads * self.head_dim))
    w = kernel.astype(self.dtype).reshape(c, self.parts, self.heads,
                                          self.head_dim)
    w = constrain(w, (EMBED, None, HEADS, None))
    return jnp.einsum("bnc,cphd->bnphd", x.astype(self.dtype), w)


# Logical axes of the block parameters, by their path below "blocks" (the
# leading LAYERS axis added by `param_axes`). Anything not listed (the
# stem, AdaLN, norms) is replicated.
_BLOCK_AXES: Dict[Tuple[str, ...], Tuple[Optional[str], ...]] = {
    ("sa", "q_bias"): (HEADS,),
    ("sa", "v_bias"): (HEADS,),
    ("sa", "scale_mul"): (HEADS,),
    ("sa", "proj", "kernel"): (HEADS, EMBED),
    ("ca", "mat_q", "kernel"): (EMBED, HEADS),
    ("ca", "mat_q", "bias"): (HEADS,),
    ("ca", "v_bias"): (HEADS,),
    ("ca", "proj", "kernel"): (HEADS, EMBED),
    ("ffn", "fc1", "kernel"): (EMBED, MLP),
    ("ffn", "fc1", "bias"): (MLP,),
    ("ffn", "fc2", "kernel"): (MLP, EMBED),
}


def _key(entry) -> str:
  return str(getattr(entry, "key", getattr(entry, "name", entry)))


def param_axes(params: Mapping[str, Any]):
  """The logical axes of every parameter: a tree like `params` whose leaves
  are tuples of names (one per dimension; None = replicated)."""
  def axes(path, leaf):
    keys = tuple(_key(p) for p in path)
    if keys[0] == "blocks":
      names = _BLOCK_AXES.get(keys[1:])
      if names is not None and len(names) + 1 == len(leaf.shape):
        return (LAYERS,) + names
    return (None,) * len(leaf.shape)
  return jax.tree_util.tree_map_with_path(axes, params)
