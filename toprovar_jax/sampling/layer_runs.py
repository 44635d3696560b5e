"""How one run of layers executes inside a scale (used by the sampler).

A run is consecutive layers with the same letter at one scale, inside one
layer segment (one stacked KV cache; `sparsity.layout`). It executes as
  * a `lax.scan` over the layer ids (the default): each iteration slices its
    block's weights from the stacked parameters by the traced id;
  * a `lax.while_loop` whose counter is the layer id
    (`ExecutionConfig.layer_loop="while"`);
  * a Python loop over static ids (`ExecutionConfig.unroll_tokens`): the
    layers read per-layer weight copies (`layer_copies`) and share one trace
    of the block (`TraceOnce`).
`kv_in` / `kv_out` are the two ways a layer reads and writes its cache row
(`ExecutionConfig.kv_read`). `LayerRun` is one run, ready to execute in its
three forms: F layers (`full`), S layers gathered once (`sparse_gathered`)
and S layers through `Block.sparse` (`sparse`: per-sub-layer selection,
cached restore).

Dimension letters: R rows (2B with guidance), N tokens of the scale, C
width, L_seg layers of a segment, M cache capacity, H heads, D head dim.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax.models import layers
from toprovar_jax.sampling import state as state_lib
from toprovar_jax.sparsity import layout
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import selection


def kv_in(buffer: bool, kc, vc, j, wo: int):
  """The block's cache arguments for row j of a segment cache.

  Args:
    buffer: kv_read "buffer" (attend over the whole row, written first) or
      "slice" (the row's prefix of earlier scales, sliced out).
    kc, vc: (L_seg, R, M, H, D) segment caches.
    j: the layer's row in the segment (int or traced int32).
    wo: static token offset at which this scale writes (= valid prefix).
  """
  if buffer:
    return dict(kv_buffer=layers.KVBuffer(kc, vc, j, wo))
  if wo == 0:
    return dict(kv_prefix=None)
  size = (1,) + kc.shape[1:2] + (wo,) + kc.shape[3:]
  start = (j, 0, 0, 0, 0)
  return dict(kv_prefix=(jax.lax.dynamic_slice(kc, start, size)[0],
                         jax.lax.dynamic_slice(vc, start, size)[0]))


def kv_out(buffer: bool, kc, vc, j, kv, wo: int, write: bool):
  """The segment caches after the block; kv is what the block returned.

  "buffer": the block already wrote its keys into the caches (kv is the
  pair). "slice": the new (R, N, H, D) keys go into row j at offset wo,
  unless `write` is False (the last generated scale: never read again).
  """
  if buffer:
    return kv
  if not write:
    return kc, vc
  k, v = kv
  at = (j, 0, wo, 0, 0)
  kc = jax.lax.dynamic_update_slice(kc, k[None].astype(kc.dtype), at)
  vc = jax.lax.dynamic_update_slice(vc, v[None].astype(vc.dtype), at)
  return kc, vc


def layer_copies(blocks, tkv, depth: int):
  """Per-layer copies of the stacked block weights and text K/V (or None).

  The barrier keeps XLA from folding the static slices into every consumer
  (one more fusion, and one more GEMM autotuning, per layer and scale).
  """
  return jax.lax.optimization_barrier(
      ([jax.tree.map(lambda t, l=l: t[l], blocks) for l in range(depth)],
       None if tkv is None else
       [jax.tree.map(lambda t, l=l: t[l], tkv) for l in range(depth)]))


class TraceOnce:
  """Calls `fn` through `jax.jit`, traced once per argument signature.

  Array arguments (and tracers) are traced; every other leaf (ints, strings,
  functions, static cache offsets) is part of the cache key, so calls that
  differ only in array values share one trace and one jaxpr. XLA inlines the
  calls: the program is the same as calling `fn` directly.
  """

  def __init__(self, fn):
    self._fn = fn
    self._jitted = {}

  def __call__(self, *args, **kwargs):
    leaves, tree = jax.tree.flatten((args, kwargs))
    # Tracers are jax.Array instances too.
    traced = tuple(isinstance(x, (jax.Array, np.ndarray)) for x in leaves)
    static = tuple(x for x, t in zip(leaves, traced) if not t)
    key = (tree, traced, static)
    if key not in self._jitted:
      def inner(dynamic, fn=self._fn):
        it_d, it_s = iter(dynamic), iter(static)
        full = [next(it_d) if t else next(it_s) for t in traced]
        a, kw = jax.tree.unflatten(tree, full)
        return fn(*a, **kw)
      self._jitted[key] = jax.jit(inner)
    return self._jitted[key]([x for x, t in zip(leaves, traced) if t])


def run_layers(body, carry, lids, *extra, unroll: int,
               while_loop: bool = False):
  """Runs `body(carry, xs) -> (carry, ys)` over a run of layers.

  lids: a `range` of layer ids -> `lax.scan` over them as an int32 array
  (xs = ids, or (ids, extra) when one `extra` pytree, possibly None, is
  given), or with `while_loop` a `lax.while_loop` whose counter is the layer
  id; or a list of Python ints -> a Python loop with static layer ids
  (xs = l, or (l, extra[i])). ys are stacked as the scan stacks them.
  """
  if isinstance(lids, range) and while_loop:
    return _while_layers(body, carry, lids, *extra)
  if isinstance(lids, range):
    ids = jnp.arange(lids.start, lids.stop, dtype=jnp.int32)
    xs = (ids, *extra) if extra else ids
    return jax.lax.scan(body, carry, xs, unroll=unroll)
  ys = []
  for i, l in enumerate(lids):
    xs = ((l, *jax.tree.map(lambda t, i=i: t[i], extra)) if extra else l)
    carry, y = body(carry, xs)
    ys.append(y)
  return carry, jax.tree.map(lambda *t: jnp.stack(t), *ys)


def _while_layers(body, carry, lids, *extra):
  """`run_layers` as a `lax.while_loop` over the layer id itself.

  The loop carries (l, carry, ys) from l = lids.start while l < lids.stop;
  ys are preallocated and written at l - lids.start. The layer id handed to
  `body` is the loop's induction variable (not an element read from an
  array), so XLA can tell that a slice at l moves by a fixed stride per
  iteration.
  """
  start, stop = lids.start, lids.stop
  n = stop - start

  def xs_at(l):
    if not extra:
      return l
    return (l, *jax.tree.map(
        lambda t: jax.lax.dynamic_index_in_dim(t, l - start, keepdims=False),
        extra))

  y_spec = jax.eval_shape(lambda c, l: body(c, xs_at(l))[1], carry,
                          jnp.int32(start))
  ys = jax.tree.map(lambda a: jnp.zeros((n,) + a.shape, a.dtype), y_spec)

  def step(state):
    l, c, acc = state
    c, y = body(c, xs_at(l))
    acc = jax.tree.map(
        lambda a, v: jax.lax.dynamic_update_index_in_dim(a, v, l - start, 0),
        acc, y)
    return l + 1, c, acc

  _, carry, ys = jax.lax.while_loop(lambda state: state[0] < stop, step,
                                    (jnp.int32(start), carry, ys))
  return carry, ys


class LayerRun:
  """One run of layers of one scale (`layout.Run`), ready to execute.

  Holds what every layer of the run shares: its segment, the cache offset it
  writes at, the loop form, and where each layer's weights come from
  (per-layer copies when unrolled, slices of the stacks when scanned).
  """

  def __init__(self, sampler, program, params, st: state_lib.ScaleState,
               run: layout.Run, sp: plan_lib.ScalePlan, si: int, n: int, *,
               unrolled: bool):
    """`sampler` (its execution settings and model) and `program` (the
    plan's static layout, the modules) are the sampler's; st is the state
    before the run, si the scale, n its token count."""
    ex = sampler.execution
    self.sampler, self.program, self.sp, self.st = sampler, program, sp, st
    self.run = run
    self.s0 = program.segments[program.seg_of[run.start]][0]
    self.wo = program.write_off[si][run.start]
    self.write = si < program.num_gen - 1
    self.unroll = (run.stop - run.start if ex.layer_unroll == 0
                   else ex.layer_unroll)
    self.impl = ex.attn_impl
    self.ctx = ({} if st.text_lengths is None
                else dict(text_lengths=st.text_lengths))
    self.blocks = params["blocks"]
    self.unrolled = unrolled
    # The scan runs over absolute layer indices: each iteration slices its
    # block's weights (and text K/V) from the full stacks, and reads and
    # writes its rows of the segment cache, which travels in the carry so
    # that XLA updates it in place. Scanning over slices of the stacks
    # instead would copy the run's weights before the loop and the whole
    # segment cache in and out of it at every scale.
    self.lids = (list(range(run.start, run.stop)) if unrolled else
                 range(run.start, run.stop))
    self.loop = functools.partial(run_layers, unroll=self.unroll,
                                  while_loop=ex.layer_loop == "while")
    # Scan bodies are traced once anyway; unrolled ones call the cached
    # trace (tracing a 2B block through flax costs ~70 ms, 320 times).
    self.apply = program.apply_block if unrolled else program.block.apply
    # (layers,) bool: each layer's output stream is finite (set by the run;
    # ExecutionConfig.check_finite), else None.
    self.check_finite = ex.check_finite
    self.finite = None

  def _finite(self, x):
    return jnp.all(jnp.isfinite(x)) if self.check_finite else None

  def layer(self, l):
    """(block weights, text K/V, row in the segment) of layer l."""
    if isinstance(l, int):  # unrolled: this layer's own copies
      tkv = self.st.layer_text_kv
      return (self.st.layer_params[l], None if tkv is None else tkv[l],
              l - self.s0)
    p = jax.tree.map(
        lambda t: jax.lax.dynamic_index_in_dim(t, l, keepdims=False),
        self.blocks)
    t = None if self.st.text_kv is None else jax.tree.map(
        lambda t: jax.lax.dynamic_index_in_dim(t, l, keepdims=False),
        self.st.text_kv)
    return p, t, l - self.s0

  def _kv_in(self, kc, vc, j):
    return kv_in(self.program.buffer, kc, vc, j, self.wo)

  def _kv_out(self, kc, vc, j, kv):
    return kv_out(self.program.buffer, kc, vc, j, kv, self.wo, self.write)

  def full(self, x, kc, vc, rope, *, want_entropy: bool, record: bool):
    """F layers on all N tokens. Returns (x, kc, vc, entropy (layers, R, N)
    or None, branch outputs (tuple of (layers, R, N, C)) or None)."""
    entropy_impl = (self.sampler.execution.entropy_impl if want_entropy
                    else None)

    def body(carry, l):
      x, kc, vc = carry
      p, tkv_l, j = self.layer(l)
      out = self.apply({"params": p}, x, self.st.cond.ada_in, rope=rope,
                       text_kv=tkv_l, impl=self.impl,
                       return_entropy=want_entropy, sa_impl=entropy_impl,
                       return_branches=record, **self._kv_in(kc, vc, j),
                       **self.ctx)
      x, kv = out[0], out[1]
      return (x, *self._kv_out(kc, vc, j, kv)), (out[2:], self._finite(x))
    (x, kc, vc), (extra, self.finite) = self.loop(body, (x, kc, vc),
                                                  self.lids)
    extra = list(extra)
    ent = extra.pop(0) if want_entropy else None
    branches = extra.pop(0) if record else None
    return x, kc, vc, ent, branches

  def sparse_gathered(self, x, kc, vc, rope, idx):
    """S layers with one kept set and passthrough restore: gather once for
    the whole run, run on (R, K, C), scatter back; pruned tokens pass."""
    xk = layers.gather_tokens(x, idx)
    rope_k = layers.gather_rope(rope, idx)

    def body(carry, l):
      xk, kc, vc = carry
      p, tkv_l, j = self.layer(l)
      xk, kv = self.apply({"params": p}, xk, self.st.cond.ada_in,
                          rope=rope_k, text_kv=tkv_l, impl=self.impl,
                          **self._kv_in(kc, vc, j), **self.ctx)
      return (xk, *self._kv_out(kc, vc, j, kv)), self._finite(xk)
    (xk, kc, vc), self.finite = self.loop(body, (xk, kc, vc), self.lids)
    return layers.scatter_tokens(x, idx, xk, add=False), kc, vc

  def sparse(self, x, kc, vc, rope, idx, hw, branch_store):
    """S layers through `Block.sparse`: kept set per sub-layer (idx None)
    or per scale, passthrough or cached restore (FastVAR)."""
    sp, run, cfg = self.sp, self.run, self.sampler.model
    cached = None
    if sp.restore == "cached":
      src = branch_store[sp.cache_from]
      src_hw = cfg.schedule[sp.cache_from]
      cached = tuple(
          jnp.stack([selection.resize_token_map(src[l][j], src_hw, hw)
                     for l in range(run.start, run.stop)])
          for j in range(len(src[run.start])))
    select_fn = None
    if idx is None:
      b = self.st.batch
      select_fn = lambda x: selection.select(
          selection.frequency_scores(x), sp.keep, share_cfg=sp.share_cfg,
          batch=b)

    def body(carry, xs):
      x, kc, vc = carry
      l, cached_l = xs
      p, tkv_l, j = self.layer(l)
      x, kv = self.apply(
          {"params": p}, x, self.st.cond.ada_in, idx=idx, select_fn=select_fn,
          rope=rope, text_kv=tkv_l, cached=cached_l, impl=self.impl,
          method=layers.Block.sparse, **self._kv_in(kc, vc, j), **self.ctx)
      return (x, *self._kv_out(kc, vc, j, kv)), self._finite(x)
    (x, kc, vc), self.finite = self.loop(body, (x, kc, vc), self.lids,
                                         cached)
    return x, kc, vc


def layer_flags(finite, depth: int) -> jax.Array:
  """(L,) bool per layer from {first layer of a run: (layers,) bool}; a
  layer outside every run (X) repeats the flag before it (True at 0)."""
  flags, last = [], jnp.bool_(True)
  for l in range(depth):
    run = max((a for a in finite if a <= l < a + finite[a].shape[0]),
              default=None)
    if run is not None:
      last = finite[run][l - run]
    flags.append(last)
  return jnp.stack(flags)
