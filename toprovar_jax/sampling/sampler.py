"""The scale loop: one jitted function generates a batch over all scales.

Design (SPEC §2, STYLE.md §8.2):
  * Python `for` over scales inside jit (every scale has its own static shape);
    `lax.scan` over runs of layers inside a scale.
  * Classifier-free guidance doubles the batch: rows [cond; uncond].
  * Explicit fixed-size KV cache per segment of layers (L_seg, rows, cap, H,
    D), carried through the layer scans and written in place at static token
    offsets. Two ways to read it (`SamplingConfig.kv_read`):
      "slice": a layer slices its row's prefix of earlier scales and
        concatenates its new keys (one copy of the valid cache per layer per
        scale); its new keys are written after attending. Keys of the last
        generated scale are never read again, so the cache holds only the
        scales before it.
      "buffer": a layer writes its new keys first and attends over its whole
        row with a static valid length (keys past it masked out), so nothing
        is concatenated; the cache also holds the last generated scale.
    Both give the same numbers.
  * Seeds, labels / text features, guidance scale and τ are traced arrays;
    the model config, tokenizer config, sampling rules and the sparsity plan
    are static (`Sampler` is a frozen, hashable dataclass passed as `self`).
  * Per-scale randomness: `fold_in(rng, si)`.

Dimension letters: B batch, S scales, N_s tokens of scale s, L layers,
C width, H heads, D head dim, T text tokens, V logits per token, d bits.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, List, Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax.models import config as config_lib
from toprovar_jax.models import layers
from toprovar_jax.models import transformer
from toprovar_jax.sampling import latents as latents_lib
from toprovar_jax.sparsity import layout
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import validation
from toprovar_jax.sparsity import selection
from toprovar_jax.sampling import strategies

Array = jax.Array

_KV_READS = ("slice", "buffer")
_LAYER_LOOPS = ("scan", "while")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
  """Static sampling rules.

  Attributes:
    top_k: keep the k largest logits (0 = off; 1 = greedy). Infinity's bit
      pairs make any k ≥ 2 a no-op, as in the official code.
    top_p: nucleus threshold (0 = off).
    return_logits: also return the guided logits of every scale (parity and
      analysis; costs B·L·V floats).
    record_entropy: compute the attention entropy of every F layer and return
      it per scale (calibration; costs one entropy pass per layer).
    attn_impl: attention implementation ("xla", "cudnn", "pallas", "auto").
    entropy_impl: self-attention implementation of layers that record
      entropy (probe layers); None = attn_impl. "pallas" is the fused FAE
      kernel, "cudnn" the exact [V | K] + logsumexp route.
    layer_unroll: layers per iteration of the `lax.scan` over a run of
      layers (0 = fully unrolled). On GPU every while-loop iteration costs a
      device->host round trip for its predicate, so unrolling trades compile
      time for latency.
    dtype: compute dtype name of the transformer ("float32" / "bfloat16").
    unroll_tokens: a run of layers whose blocks see at most this many tokens
      per row (N_s for F runs, K_s for S runs) is unrolled in Python instead
      of scanned (0 = scan everything). Unrolled layers read their weights
      from per-layer copies made once per call and index their caches
      statically: a scanned layer slices its weights from the stacks by a
      traced index, which XLA materialises before every GEMM (about 260 MB
      of copies per Infinity-2B layer, the bulk of a small scale's time).
      Costs compile time and one extra copy of the block weights.
    layer_loop: how a scanned run of layers loops: "scan" (`lax.scan` over
      the layer ids) or "while" (a `lax.while_loop` whose counter is the layer
      id, so every per-layer slice is a function of the loop's induction
      variable: the form XLA's dynamic-slice fusion
      (--xla_gpu_enable_dynamic_slice_fusion) needs to let a cuBLAS GEMM read
      the layer's weights in place). Same numbers either way. Measured on an
      H200 with jax 0.11.2 (BENCHMARKS.md runs 10-11), the fusion then reads
      the weights in place but the program is slower than the scan with its
      weight copies; "scan" stays the default.
    kv_read: how a layer reads its KV cache: "slice" (prefix slice + concat
      with the new keys) or "buffer" (write first, attend over the whole
      cache row with a static kv_len; no copy). See the module docstring.
  """
  top_k: int = 0
  top_p: float = 0.0
  return_logits: bool = False
  record_entropy: bool = False
  attn_impl: str = "xla"
  entropy_impl: Optional[str] = None
  layer_unroll: int = 1
  dtype: str = "float32"
  kv_read: str = "slice"
  unroll_tokens: int = 0
  layer_loop: str = "scan"

  def __post_init__(self):
    if self.kv_read not in _KV_READS:
      raise ValueError(f"kv_read must be one of {_KV_READS}, "
                       f"got {self.kv_read!r}")
    if self.layer_loop not in _LAYER_LOOPS:
      raise ValueError(f"layer_loop must be one of {_LAYER_LOOPS}, "
                       f"got {self.layer_loop!r}")
    if self.unroll_tokens < 0:
      raise ValueError(f"unroll_tokens must be >= 0, got {self.unroll_tokens}")


@flax.struct.dataclass
class Generation:
  """What one call of the sampler returns.

  Attributes:
    tokens: VAR (B, L) int32 code indices; Infinity (B, L, d) uint8 bits;
      L counts the generated scales only (those before the plan's exit).
    latent: VAR f̂ (B, Hf, Wf, Cvae); Infinity summed codes (B, Hf, Wf, d').
      Scales at or past the plan's exit are absent from both.
    logits: guided logits (B, L, V) when `return_logits`, else None.
    entropy: with `record_entropy`, per generated scale an (L, B, N_s) array
      of head-mean attention entropies of the conditional rows (NaN for layers
      that are not F at that scale), else None.
  """
  tokens: Array
  latent: Array
  logits: Optional[Array] = None
  entropy: Optional[Tuple[Array, ...]] = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sampler:
  """Static description of one generation program (hashable: jit's `self`)."""
  model: config_lib.TransformerConfig
  tokenizer: Any
  sampling: SamplingConfig = SamplingConfig()
  plan: Optional[plan_lib.SparsityPlan] = None

  def __post_init__(self):
    if self.plan is not None:
      validation.validate_plan(self.plan, self.model)

  @property
  def resolved_plan(self) -> plan_lib.SparsityPlan:
    return self.plan if self.plan is not None else plan_lib.dense_plan(self.model)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.sampling.dtype)

  def _unrolled(self, run: layout.Run, sp: plan_lib.ScalePlan,
                n: int) -> bool:
    """Whether a run of layers is unrolled (SamplingConfig.unroll_tokens)."""
    if run.letter == "X" or self.sampling.unroll_tokens <= 0:
      return False
    tokens = n if run.letter == "F" else sp.keep
    return tokens <= self.sampling.unroll_tokens

  # ---------------------------------------------------------------------------

  @functools.partial(jax.jit, static_argnums=0)
  def generate(self, params, vae_params, rng: Array, cfg_scale: Array,
               tau: Array, labels: Optional[Array] = None,
               text: Optional[Array] = None,
               text_mask: Optional[Array] = None,
               forced: Optional[Array] = None) -> Generation:
    """Generates one batch.

    Args:
      params: transformer params ({"stem", "blocks"}).
      vae_params: tokenizer variables (VAR needs its codebook and φ convs;
        unused for Infinity, pass None).
      rng: PRNG key.
      cfg_scale: () guidance scale (traced).
      tau: () Infinity logit temperature (traced; ignored by VAR).
      labels: (B,) int class labels (VAR).
      text: (B, T, Ct) raw text features, zero-padded to the static T, and
        text_mask (B, T) bool (Infinity).
      forced: optional choices to use instead of sampling (parity tests):
        VAR (B, L) int; Infinity (B, L, d) bits.
    Returns:
      Generation.

    Every text_mask row must be a prefix (real tokens first, then padding):
    cross-attention takes each row's valid text as a length, as the official
    varlen code does. Host-side callers check it with `check_text_mask`.
    """
    return self._generate(params, vae_params, rng, cfg_scale, tau, labels,
                          text, text_mask, forced)

  def _generate(self, params, vae_params, rng, cfg_scale, tau, labels, text,
                text_mask, forced) -> Generation:
    cfg = self.model
    plan = self.resolved_plan
    dtype = self.compute_dtype
    impl = self.sampling.attn_impl
    stem = transformer.stem_module(cfg, dtype)
    block = transformer.block_module(cfg, dtype)
    sp_stem = {"params": params["stem"]}
    acc = latents_lib.for_model(cfg, self.tokenizer)

    # -- conditioning for the doubled batch [cond; uncond] --------------------
    rope_cos = rope_sin = None
    if cfg.style == "var":
      b = labels.shape[0]
      lab2 = jnp.concatenate([labels, jnp.full_like(labels, cfg.num_classes)])
      cond = stem.apply(sp_stem, labels=lab2, method=transformer.Stem.condition)
      tkv = text_lengths = None
    else:
      b = text.shape[0]
      unc = stem.apply(sp_stem, text_mask, method=transformer.Stem.uncond_text)
      cond = stem.apply(sp_stem, text=jnp.concatenate([text, unc]),
                        text_mask=jnp.concatenate([text_mask, text_mask]),
                        method=transformer.Stem.condition)
      tkv = transformer.text_kv_all(params, cfg, cond.text.astype(dtype), dtype)
      # Cross-attention takes the valid text as per-row lengths (the
      # official varlen form; cuDNN's padding mask, no bias tensor).
      text_lengths = jnp.sum(cond.text_mask, axis=1, dtype=jnp.int32)
      rope_cos, rope_sin = layers.rope_tables(
          layers.rope_positions(cfg), cfg.head_dim, cfg.rope_base)

    # -- static cache layout from the plan ------------------------------------
    num_gen = plan.num_generated
    off = cfg.scale_offsets
    segments = layout.layer_segments(plan)
    seg_of = {l: i for i, (a, z) in enumerate(segments) for l in range(a, z)}
    write_off = layout.kv_write_offsets(plan)
    h, dh = cfg.num_heads, cfg.head_dim
    buffer = self.sampling.kv_read == "buffer"
    # "slice": keys of the last generated scale are never read again, so they
    # are not stored; "buffer": every scale writes before it attends.
    cached_scales = num_gen if buffer else num_gen - 1
    caches = []
    for a, z in segments:
      cap = sum(layout.tokens_written(plan, s, a)
                for s in range(cached_scales))
      k = jnp.zeros((z - a, 2 * b, cap, h, dh), dtype)
      caches.append((k, jnp.zeros_like(k)))
    cache_scales = {p.cache_from for p in plan.scales if p.restore == "cached"}
    branch_store: Dict[int, Dict[int, Tuple[Array, ...]]] = {}

    # Per-layer copies of the block weights (and text K/V) for unrolled runs,
    # made once per call, at the first unrolled run.
    layer_params = layer_tkv = None

    # Unrolled layers of one scale and run type share one trace of the block.
    apply_block = _TraceOnce(block.apply)

    latent = acc.init(b)
    x = cond.x0
    guided = True
    prev_entropy, prev_hw = None, None
    tokens, all_logits, entropies = [], [], []
    for si in range(num_gen):
      # Named per scale so that a profile can attribute kernels to scales
      # (benchmarking.profile_summary); no effect on the program.
      with jax.named_scope(f"scale{si:02d}"):
        sp = plan.scales[si]
        if guided and not sp.guidance:
          # SkipVAR branch drop: from here on only the conditional half runs.
          guided = False
          half = lambda t: None if t is None else t[:b]
          x = x[:b]
          cond = jax.tree.map(half, cond)
          tkv = None if tkv is None else jax.tree.map(lambda t: t[:, :b], tkv)
          layer_tkv = None if layer_tkv is None else jax.tree.map(
              lambda t: t[:b], layer_tkv)
          text_lengths = half(text_lengths)
          caches = [(k[:, :b], v[:, :b]) for k, v in caches]
          prev_entropy = half(prev_entropy)
          branch_store = jax.tree.map(half, branch_store)
        rows = 2 * b if guided else b
        a_tok, e_tok = off[si], off[si + 1]
        n = e_tok - a_tok
        hw = cfg.schedule[si]
        rope = None
        if rope_cos is not None:
          rope = (jnp.asarray(rope_cos[a_tok:e_tok]),
                  jnp.asarray(rope_sin[a_tok:e_tok]))
        runs = layout.runs_at_scale(plan, si,
                                      split_at_probe=sp.probe_layer is not None)
        record_branches = si in cache_scales
        idx = None
        probe_entropy = None
        layer_entropy = []

        def choose(x, sp=sp, hw=hw, n=n):
          """Kept indices (rows, K) for a kept set chosen once per scale."""
          if sp.keep == n and sp.scorer == "none":
            return jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32),
                                    (x.shape[0], n))
          if sp.scorer == "frequency":
            scores = selection.frequency_scores(x)
          elif sp.entropy_from == "probe":
            scores = selection.entropy_keep_scores(probe_entropy)
          else:
            scores = selection.entropy_keep_scores(
                selection.resize_entropy(prev_entropy, prev_hw, hw))
          return selection.select(scores, sp.keep, share_cfg=sp.share_cfg,
                                  batch=b)

        for run in runs:
          if run.letter == "X":
            continue
          seg = seg_of[run.start]
          s0 = segments[seg][0]
          kc, vc = caches[seg]
          wo = write_off[si][run.start]
          write = si < num_gen - 1
          unroll = (run.stop - run.start if self.sampling.layer_unroll == 0
                    else self.sampling.layer_unroll)
          is_probe = (sp.probe_layer is not None
                      and run.start == sp.probe_layer == run.stop - 1)
          want_entropy = is_probe or self.sampling.record_entropy
          ctx = {} if text_lengths is None else dict(text_lengths=text_lengths)
          # The scan runs over absolute layer indices: each iteration slices its
          # block's weights (and text K/V) from the full stacks, and reads and
          # writes its rows of the segment cache, which travels in the carry so
          # that XLA updates it in place. Scanning over slices of the stacks
          # instead would copy the run's weights before the loop and the whole
          # segment cache in and out of it at every scale.
          unrolled = self._unrolled(run, sp, n)
          if unrolled and layer_params is None:
            layer_params, layer_tkv = _layer_copies(params["blocks"], tkv,
                                                    cfg.depth)
          lids = (list(range(run.start, run.stop)) if unrolled else
                  range(run.start, run.stop))
          run_layers = functools.partial(
              _run_layers, unroll=unroll,
              while_loop=self.sampling.layer_loop == "while")
          # Scan bodies are traced once anyway; unrolled ones call the cached
          # trace (tracing a 2B block through flax costs ~70 ms, 320 times).
          apply = apply_block if unrolled else block.apply

          def layer(l, s0=s0, layer_tkv=layer_tkv):
            if isinstance(l, int):  # unrolled: this layer's own copies
              return (layer_params[l],
                      None if layer_tkv is None else layer_tkv[l], l - s0)
            p = jax.tree.map(
                lambda t: jax.lax.dynamic_index_in_dim(t, l, keepdims=False),
                params["blocks"])
            t = None if tkv is None else jax.tree.map(
                lambda t: jax.lax.dynamic_index_in_dim(t, l, keepdims=False),
                tkv)
            return p, t, l - s0

          def kv_in(kc, vc, j, wo=wo):
            """The block's cache arguments for layer row j."""
            if buffer:
              return dict(kv_buffer=layers.KVBuffer(kc, vc, j, wo))
            if wo == 0:
              return dict(kv_prefix=None)
            size = (1,) + kc.shape[1:2] + (wo,) + kc.shape[3:]
            start = (j, 0, 0, 0, 0)
            return dict(kv_prefix=(jax.lax.dynamic_slice(kc, start, size)[0],
                                   jax.lax.dynamic_slice(vc, start, size)[0]))

          def kv_out(kc, vc, j, kv, wo=wo, write=write):
            """The caches after the block; kv is what the block returned."""
            if buffer:
              return kv  # the block already wrote its keys into the caches
            if not write:
              return kc, vc
            k, v = kv
            at = (j, 0, wo, 0, 0)
            kc = jax.lax.dynamic_update_slice(kc, k[None].astype(kc.dtype), at)
            vc = jax.lax.dynamic_update_slice(vc, v[None].astype(vc.dtype), at)
            return kc, vc

          if run.letter == "F":
            def body(carry, l, rope=rope, want_entropy=want_entropy, ctx=ctx,
                     kv_in=kv_in, kv_out=kv_out, layer=layer,
                     record=record_branches):
              x, kc, vc = carry
              p, tkv_l, j = layer(l)
              out = apply({"params": p}, x, cond.ada_in, rope=rope,
                                text_kv=tkv_l, impl=impl,
                                return_entropy=want_entropy,
                                sa_impl=(self.sampling.entropy_impl
                                         if want_entropy else None),
                                return_branches=record, **kv_in(kc, vc, j),
                                **ctx)
              x, kv = out[0], out[1]
              return (x, *kv_out(kc, vc, j, kv)), out[2:]
            (x, kc, vc), extra = run_layers(body, (x, kc, vc), lids)
            extra = list(extra)
            if want_entropy:
              ent = extra.pop(0)  # (layers, rows, n)
              if is_probe:
                probe_entropy = ent[0]
              layer_entropy.append((run.start, ent))
            if record_branches:
              br = extra.pop(0)  # tuple of (layers, rows, n, C)
              for j, l in enumerate(range(run.start, run.stop)):
                branch_store.setdefault(si, {})[l] = tuple(t[j] for t in br)
          else:  # "S"
            if idx is None and sp.select == "scale":
              idx = choose(x)
            if sp.select == "scale" and sp.restore == "passthrough":
              # Gather once for the whole run; pruned tokens pass unchanged.
              xk = layers.gather_tokens(x, idx)
              rope_k = layers.gather_rope(rope, idx)

              def body(carry, l, rope_k=rope_k, ctx=ctx, kv_in=kv_in,
                       kv_out=kv_out, layer=layer):
                xk, kc, vc = carry
                p, tkv_l, j = layer(l)
                xk, kv = apply({"params": p}, xk, cond.ada_in,
                                     rope=rope_k, text_kv=tkv_l, impl=impl,
                                     **kv_in(kc, vc, j), **ctx)
                return (xk, *kv_out(kc, vc, j, kv)), None
              (xk, kc, vc), _ = run_layers(body, (xk, kc, vc), lids)
              x = layers.scatter_tokens(x, idx, xk, add=False)
            else:
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
                select_fn = lambda x, sp=sp: selection.select(
                    selection.frequency_scores(x), sp.keep,
                    share_cfg=sp.share_cfg, batch=b)

              def body(carry, xs, idx=idx, select_fn=select_fn, rope=rope,
                       ctx=ctx, kv_in=kv_in, kv_out=kv_out, layer=layer):
                x, kc, vc = carry
                l, cached_l = xs
                p, tkv_l, j = layer(l)
                x, kv = apply(
                    {"params": p}, x, cond.ada_in, idx=idx, select_fn=select_fn,
                    rope=rope, text_kv=tkv_l, cached=cached_l, impl=impl,
                    method=layers.Block.sparse, **kv_in(kc, vc, j), **ctx)
                return (x, *kv_out(kc, vc, j, kv)), None
              (x, kc, vc), _ = run_layers(body, (x, kc, vc), lids,
                                          cached)
          caches[seg] = (kc, vc)

        if probe_entropy is not None:
          prev_entropy, prev_hw = probe_entropy, hw
        if self.sampling.record_entropy:
          entropies.append(_assemble_entropy(layer_entropy, cfg.depth, b, n))

        logits = stem.apply(sp_stem, x, cond.cond,
                            method=transformer.Stem.logits)
        logits = logits.astype(jnp.float32)
        if cfg.style == "var":
          guided_logits = (strategies.guide_var(logits, cfg_scale, si,
                                                cfg.num_scales)
                           if guided else logits)
          choice = strategies.sample(jax.random.fold_in(rng, si), guided_logits,
                                     top_k=self.sampling.top_k,
                                     top_p=self.sampling.top_p)
        else:
          guided_logits = (strategies.guide_infinity(logits, cfg_scale, tau)
                           if guided else logits / tau)
          pairs = guided_logits.reshape(b, n, cfg.latent_dim, 2)
          choice = strategies.sample(jax.random.fold_in(rng, si), pairs,
                                     top_k=min(self.sampling.top_k, 2),
                                     top_p=self.sampling.top_p)
        if forced is not None:
          choice = forced[:, a_tok:e_tok].astype(jnp.int32)
        tokens.append(choice)
        if self.sampling.return_logits:
          all_logits.append(guided_logits)
        latent = acc.add(vae_params, latent, choice, si)
        if si < num_gen - 1:
          feat = acc.next_input(vae_params, latent, si + 1)
          x = stem.apply(sp_stem, feat, si + 1, method=transformer.Stem.embed)
          if guided:
            x = jnp.concatenate([x, x], axis=0)

    toks = jnp.concatenate(tokens, axis=1)
    if cfg.style == "infinity":
      toks = toks.astype(jnp.uint8)
    lg = jnp.concatenate(all_logits, axis=1) if all_logits else None
    return Generation(tokens=toks, latent=latent, logits=lg,
                      entropy=tuple(entropies) if entropies else None)


def _layer_copies(blocks, tkv, depth: int):
  """Per-layer copies of the stacked block weights and text K/V (or None).

  The barrier keeps XLA from folding the static slices into every consumer
  (one more fusion, and one more GEMM autotuning, per layer and scale).
  """
  return jax.lax.optimization_barrier(
      ([jax.tree.map(lambda t, l=l: t[l], blocks) for l in range(depth)],
       None if tkv is None else
       [jax.tree.map(lambda t, l=l: t[l], tkv) for l in range(depth)]))


class _TraceOnce:
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


def _run_layers(body, carry, lids, *extra, unroll: int,
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
  """`_run_layers` as a `lax.while_loop` over the layer id itself.

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


def check_text_mask(text_mask: np.ndarray) -> None:
  """Raises ValueError unless every row of the (B, T) bool mask is a prefix
  (True for the real tokens, then False for the padding)."""
  if text_mask.ndim != 2 or text_mask.dtype != np.bool_:
    raise ValueError("text_mask must be a (B, T) bool array, got "
                     f"{text_mask.dtype} {text_mask.shape}")
  lengths = text_mask.sum(axis=1)
  prefix = np.arange(text_mask.shape[1])[None] < lengths[:, None]
  bad = np.flatnonzero(np.any(text_mask != prefix, axis=1))
  if bad.size:
    raise ValueError(
        f"text_mask row {int(bad[0])} is not a prefix mask (real tokens "
        "first, then padding); the sampler passes each row's text to "
        "cross-attention as a length, as the official varlen code does")


def _assemble_entropy(parts, depth: int, b: int, n: int) -> Array:
  """Per-layer entropy of the conditional rows (L, B, N); NaN where a layer
  did not record it (X / S layers)."""
  out = jnp.full((depth, b, n), jnp.nan, jnp.float32)
  for start, ent in parts:
    out = out.at[start:start + ent.shape[0]].set(ent[:, :b].astype(jnp.float32))
  return out
