"""Timing of one attention call with and without entropy (issue 3, FAE).

The question it answers: what does per-query entropy cost in a probe layer,
against plain attention of the same shape? `probe_shapes` lists the
self-attention shapes of a model's probe layers at given scales (queries of
the scale, keys = every earlier scale plus itself), and `time_attention`
times every (shape, route) pair with the same random inputs:

  plain          attention(..., implementation=impl) without entropy
  entropy        the same implementation returning entropy (cuDNN: the
                 exact [V | K] + logsumexp route; XLA: closed form)
  pallas         the fused FAE kernel, with entropy, per block size

Times are medians of `runs` calls after a warm-up, closed by
`block_until_ready`; jitted per (shape, route).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from toprovar_jax.models import config as config_lib
from toprovar_jax.ops import attention as attention_ops


@dataclasses.dataclass(frozen=True)
class Shape:
  """One self-attention call: B rows, Nq queries, Nk keys, H heads, D."""
  batch: int
  queries: int
  keys: int
  heads: int
  head_dim: int

  @property
  def flops(self) -> float:
    """Matmul FLOPs of plain attention (QK^T and PV)."""
    return 4.0 * self.batch * self.heads * self.queries * self.keys * (
        self.head_dim)


def probe_shapes(cfg: config_lib.TransformerConfig, scales: Sequence[int],
                 batch: int = 2) -> Tuple[Shape, ...]:
  """Self-attention shapes at `scales` (dense prefix), CFG rows `batch`."""
  off = cfg.scale_offsets
  return tuple(Shape(batch, off[s + 1] - off[s], off[s + 1], cfg.num_heads,
                     cfg.head_dim) for s in scales)


def _median_s(fn, args, runs: int) -> float:
  jax.block_until_ready(fn(*args))  # compile + warm-up
  out = []
  for _ in range(runs):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    out.append(time.perf_counter() - t)
  return statistics.median(out)


def time_attention(shapes: Sequence[Shape], *, impl: str = "cudnn",
                   dtype: Any = jnp.bfloat16, runs: int = 20,
                   pallas_blocks: Sequence[Tuple[int, int]] = ((128, 128),),
                   seed: int = 0) -> List[Dict[str, Any]]:
  """Times plain / entropy / Pallas attention on each shape.

  Args:
    shapes: the calls to time.
    impl: implementation of the plain and entropy routes ('cudnn', 'xla').
    dtype: q, k, v dtype.
    runs: timed calls per route (median).
    pallas_blocks: (block_q, block_k) of the Pallas FAE kernel; empty to
      skip it (it needs a GPU, or runs in interpret mode elsewhere, slowly).
    seed: inputs.

  Returns:
    One dict per shape: the shape, its FLOPs and, per route, seconds and
    the entropy overhead over plain (fraction).
  """
  rows = []
  for i, sh in enumerate(shapes):
    kq, kk, kv = jax.random.split(jax.random.fold_in(
        jax.random.key(seed), i), 3)
    q = jax.random.normal(kq, (sh.batch, sh.queries, sh.heads, sh.head_dim),
                          dtype)
    k = jax.random.normal(kk, (sh.batch, sh.keys, sh.heads, sh.head_dim),
                          dtype)
    v = jax.random.normal(kv, (sh.batch, sh.keys, sh.heads, sh.head_dim),
                          dtype)
    scale = 1.0 / sh.head_dim ** 0.5
    routes = {
        "plain": jax.jit(lambda q, k, v: attention_ops.attention(
            q, k, v, scale=scale, implementation=impl)),
        "entropy": jax.jit(lambda q, k, v: attention_ops.attention(
            q, k, v, scale=scale, implementation=impl, return_entropy=True)),
    }
    for bq, bk in pallas_blocks:
      routes[f"pallas_{bq}x{bk}"] = jax.jit(
          lambda q, k, v, bq=bq, bk=bk: attention_ops.attention(
              q, k, v, scale=scale, implementation="pallas",
              return_entropy=True, block_sizes=(bq, bk)))
    row: Dict[str, Any] = dict(dataclasses.asdict(sh), gflop=sh.flops / 1e9,
                               impl=impl, dtype=jnp.dtype(dtype).name)
    for name, fn in routes.items():
      try:
        row[f"{name}_s"] = _median_s(fn, (q, k, v), runs)
      except Exception as e:  # pylint: disable=broad-except
        # One failing route (e.g. a block size the kernel rejects) must not
        # cost the others' numbers; the error is reported in its place.
        row[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    plain: Optional[float] = row.get("plain_s")
    for name in routes:
      if name != "plain" and plain and f"{name}_s" in row:
        row[f"{name}_overhead"] = row[f"{name}_s"] / plain - 1.0
    rows.append(row)
  return rows
