"""The scale loop: one jitted function generates a batch over all scales.

Design (SPEC §2, STYLE.md §8.2, §18):
  * Python `for` over scales inside jit (every scale has its own static shape);
    runs of layers inside a scale loop over the layers (`layer_runs`).
  * Classifier-free guidance doubles the batch: rows [cond; uncond].
  * Explicit fixed-size KV cache per segment of layers (L_seg, rows, cap, H,
    D), carried through the layer loops and written in place at static token
    offsets. Two ways to read it (`ExecutionConfig.kv_read`):
      "slice": a layer slices its row's prefix of earlier scales and
        concatenates its new keys (one copy of the valid cache per layer per
        scale); its new keys are written after attending. Keys of the last
        generated scale are never read again, so the cache holds only the
        scales before it.
      "buffer": a layer writes its new keys first and attends over its whole
        row with a static valid length (keys past it masked out), so nothing
        is concatenated; the cache also holds the last generated scale.
    Both give the same numbers.
  * The carry between scales is a `state.ScaleState`; `step` runs one scale.
    `generate` is `init_state`, `step` for every generated scale, `finish`.
    A run of scales is a function of the state before it, so a prefix
    [0, d) can end at a decision scale and a suffix [d, S) continue from its
    state (SkipVAR, adaptive ToProVAR: the suffix plan must then agree with
    the prefix plan on scales [0, d) and on the cache layout the state
    holds).
  * Seeds, labels / text features, guidance scale and τ are traced arrays;
    the model config, tokenizer config, sampling rules, execution settings
    and the sparsity plan are static (`Sampler` is a frozen, hashable
    dataclass passed as `self`).
  * Randomness per row: `rng` holds one typed PRNG key per row (B,) and
    row b draws scale si from `fold_in(rng[b], si)` alone (vmapped over
    rows, `strategies.sample_rows`), so an image depends only on its own
    key: never on the batch size, the other rows or the device it runs on.
    `sampling.runner` gives image j of a run the key `fold_in(key(seed), j)`.

Static configuration comes in two groups: `SamplingConfig`, what is computed
(top-k / top-p, dtype, what is returned), and `ExecutionConfig`, how the same
numbers are computed (attention kernels, KV-cache reads, layer loops and
unrolling); execution settings change speed and compile time, not results
(tests/sampling/execution_variants_test.py).

Dimension letters: B batch, R rows (2B with guidance), S scales, N_s tokens
of scale s, K_s kept tokens, L layers, C width, H heads, D head dim, T text
tokens, V logits per token, d bits.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp

from toprovar_jax.models import axes
from toprovar_jax.models import config as config_lib
from toprovar_jax.models import layers
from toprovar_jax.models import transformer
from toprovar_jax.sampling import inputs
from toprovar_jax.sampling import latents as latents_lib
from toprovar_jax.sampling import layer_runs
from toprovar_jax.sampling import state as state_lib
from toprovar_jax.sampling import strategies
from toprovar_jax.sparsity import layout
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import selection
from toprovar_jax.sparsity import validation

Array = jax.Array
ScaleState = state_lib.ScaleState

KV_READS = ("slice", "buffer")
# Logical axes of a segment's KV cache (L_seg, R, M, H, D).
_CACHE_AXES = (axes.LAYERS, axes.BATCH, None, axes.HEADS, None)
_LAYER_LOOPS = ("scan", "while")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
  """Static sampling rules: what a generation computes and returns.

  Attributes:
    top_k: keep the k largest logits (0 = off; 1 = greedy). Infinity's bit
      pairs make any k ≥ 2 a no-op, as in the official code.
    top_p: nucleus threshold (0 = off).
    return_logits: also return the guided logits of every scale (parity and
      analysis; costs B·L·V floats).
    record_entropy: compute the attention entropy of every F layer and return
      it per scale (calibration; costs one entropy pass per layer).
    dtype: compute dtype name of the transformer ("float32" / "bfloat16").
  """
  top_k: int = 0
  top_p: float = 0.0
  return_logits: bool = False
  record_entropy: bool = False
  dtype: str = "float32"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExecutionConfig:
  """Static execution settings: how the same numbers are computed.

  None of these changes what is generated (beyond the rounding of another
  kernel); they trade speed, memory and compile time.

  Attributes:
    attn_impl: attention implementation ("xla", "cudnn", "pallas", "auto").
    entropy_impl: self-attention implementation of layers that record
      entropy (probe layers); None = attn_impl. "pallas" is the fused FAE
      kernel, "cudnn" the exact [V | K] + logsumexp route.
    kv_read: how a layer reads its KV cache: "slice" (prefix slice + concat
      with the new keys) or "buffer" (write first, attend over the whole
      cache row with a static kv_len; no copy). See the module docstring.
    layer_loop: how a scanned run of layers loops: "scan" (`lax.scan` over
      the layer ids) or "while" (a `lax.while_loop` whose counter is the layer
      id, so every per-layer slice is a function of the loop's induction
      variable: the form XLA's dynamic-slice fusion
      (--xla_gpu_enable_dynamic_slice_fusion) needs to let a cuBLAS GEMM read
      the layer's weights in place). Same numbers either way. Measured on an
      H200 with jax 0.11.2 (BENCHMARKS.md runs 10-11), the fusion then reads
      the weights in place but the program is slower than the scan with its
      weight copies; "scan" stays the default.
    unroll_tokens: a run of layers whose blocks see at most this many tokens
      per row (N_s for F runs, K_s for S runs) is unrolled in Python instead
      of scanned (0 = scan everything). Unrolled layers read their weights
      from per-layer copies made once per call and index their caches
      statically: a scanned layer slices its weights from the stacks by a
      traced index, which XLA materialises before every GEMM (about 260 MB
      of copies per Infinity-2B layer, the bulk of a small scale's time).
      Costs compile time and one extra copy of the block weights.
    layer_unroll: layers per iteration of the `lax.scan` over a run of
      layers (0 = fully unrolled). On GPU every while-loop iteration costs a
      device->host round trip for its predicate, so unrolling trades compile
      time for latency.
    check_finite: record whether each layer's output and the logits are
      finite (`Generation.finite`, one reduction per layer); the runner
      stops at the first that is not, naming scale and layer (SPEC §11).
  """
  attn_impl: str = "xla"
  entropy_impl: Optional[str] = None
  kv_read: str = "slice"
  layer_loop: str = "scan"
  unroll_tokens: int = 0
  layer_unroll: int = 1
  check_finite: bool = True

  def __post_init__(self):
    if self.kv_read not in KV_READS:
      raise ValueError(f"kv_read must be one of {KV_READS}, "
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
    finite: (S_gen, L + 1) bool with `check_finite`: layer l's output at
      scale s is finite (X repeats the layer before), column L the logits.
  """
  tokens: Array
  latent: Array
  logits: Optional[Array] = None
  entropy: Optional[Tuple[Array, ...]] = None
  finite: Optional[Array] = None


class _Program:
  """The trace-time pieces of one generation program (not a pytree).

  Modules, the static cache layout of the plan, the RoPE tables and the
  shared trace of unrolled blocks: everything `step` needs besides the
  parameters and the state, built once per traced call.
  """

  def __init__(self, sampler: "Sampler", params):
    cfg = sampler.model
    self.plan = plan = sampler.resolved_plan
    self.dtype = sampler.compute_dtype
    self.stem = transformer.stem_module(cfg, self.dtype)
    self.block = transformer.block_module(cfg, self.dtype)
    self.sp_stem = {"params": params["stem"]}
    self.acc = latents_lib.for_model(cfg, sampler.tokenizer)
    self.rope_cos = self.rope_sin = None
    if cfg.style == "infinity":
      self.rope_cos, self.rope_sin = layers.rope_tables(
          layers.rope_positions(cfg), cfg.head_dim, cfg.rope_base)
    self.num_gen = plan.num_generated
    self.segments = layout.layer_segments(plan)
    self.seg_of = {l: i for i, (a, z) in enumerate(self.segments)
                   for l in range(a, z)}
    self.write_off = layout.kv_write_offsets(plan)
    self.buffer = sampler.execution.kv_read == "buffer"
    self.cache_scales = {p.cache_from for p in plan.scales
                         if p.restore == "cached"}
    # Unrolled layers of one scale and run type share one trace of the block.
    self.apply_block = layer_runs.TraceOnce(self.block.apply)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sampler:
  """Static description of one generation program (hashable: jit's `self`)."""
  model: config_lib.TransformerConfig
  tokenizer: Any
  sampling: SamplingConfig = SamplingConfig()
  execution: ExecutionConfig = ExecutionConfig()
  plan: Optional[plan_lib.SparsityPlan] = None

  def __post_init__(self):
    if self.plan is not None:
      validation.validate_plan(self.plan, self.model)

  @property
  def resolved_plan(self) -> plan_lib.SparsityPlan:
    return self.plan if self.plan is not None else plan_lib.dense_plan(
        self.model)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.sampling.dtype)

  def _unrolled(self, run: layout.Run, sp: plan_lib.ScalePlan,
                n: int) -> bool:
    """Whether a run of layers is unrolled (ExecutionConfig.unroll_tokens)."""
    if run.letter == "X" or self.execution.unroll_tokens <= 0:
      return False
    tokens = n if run.letter == "F" else sp.keep
    return tokens <= self.execution.unroll_tokens

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
      rng: (B,) typed PRNG keys (`jax.random.key`), one per row; row b
        samples scale s with fold_in(rng[b], s).
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
    varlen code does. Host-side callers check it with `inputs.check_text_mask`.
    """
    return self._generate(params, vae_params, rng, cfg_scale, tau, labels,
                          text, text_mask, forced)

  def _generate(self, params, vae_params, rng, cfg_scale, tau, labels, text,
                text_mask, forced) -> Generation:
    """`generate` before jit: init_state, step per generated scale, finish."""
    program = self.program(params)
    st = self.init_state(program, params, labels=labels, text=text,
                         text_mask=text_mask)
    inputs.check_row_keys(rng, st.batch)
    for _ in range(program.num_gen):
      st = self.step(program, params, vae_params, st, rng=rng,
                     cfg_scale=cfg_scale, tau=tau, forced=forced)
    return self.finish(st)

  def program(self, params) -> _Program:
    """The trace-time pieces `init_state` and `step` share (modules, the
    plan's cache layout, RoPE tables); build one per traced program."""
    return _Program(self, params)

  def init_state(self, program: _Program, params, *,
                 labels: Optional[Array] = None, text: Optional[Array] = None,
                 text_mask: Optional[Array] = None) -> ScaleState:
    """The state before scale 0: conditioning of the doubled batch [cond;
    uncond], empty caches sized from the plan, a zero latent."""
    cfg, plan = self.model, program.plan
    dtype, stem = program.dtype, program.stem
    tkv = text_lengths = None
    if cfg.style == "var":
      b = labels.shape[0]
      lab2 = jnp.concatenate([labels, jnp.full_like(labels, cfg.num_classes)])
      cond = stem.apply(program.sp_stem, labels=lab2,
                        method=transformer.Stem.condition)
    else:
      b = text.shape[0]
      unc = stem.apply(program.sp_stem, text_mask,
                       method=transformer.Stem.uncond_text)
      cond = stem.apply(program.sp_stem, text=jnp.concatenate([text, unc]),
                        text_mask=jnp.concatenate([text_mask, text_mask]),
                        method=transformer.Stem.condition)
      tkv = transformer.text_kv_all(params, cfg, cond.text.astype(dtype), dtype)
      # Cross-attention takes the valid text as per-row lengths (the
      # official varlen form; cuDNN's padding mask, no bias tensor).
      text_lengths = jnp.sum(cond.text_mask, axis=1, dtype=jnp.int32)

    # "slice": keys of the last generated scale are never read again, so they
    # are not stored; "buffer": every scale writes before it attends.
    cached_scales = program.num_gen if program.buffer else program.num_gen - 1
    h, dh = cfg.num_heads, cfg.head_dim
    caches = []
    for a, z in program.segments:
      cap = sum(layout.tokens_written(plan, s, a)
                for s in range(cached_scales))
      k = jnp.zeros((z - a, 2 * b, cap, h, dh), dtype)
      # Rows over `data`, heads over `model` under a mesh (toprovar_jax
      # .sharding); the identity without one.
      k = axes.constrain(k, _CACHE_AXES)
      caches.append((k, axes.constrain(jnp.zeros_like(k), _CACHE_AXES)))
    return ScaleState(
        x=cond.x0, latent=program.acc.init(b), caches=tuple(caches),
        cond=cond, text_kv=tkv, text_lengths=text_lengths, layer_params=None,
        layer_text_kv=None, prev_entropy=None, branch_store={}, tokens=(),
        logits=(), entropy=(), scale=0, batch=b, guided=True)

  def step(self, program: _Program, params, vae_params, st: ScaleState, *,
           rng: Array, cfg_scale: Array, tau: Array,
           forced: Optional[Array] = None) -> ScaleState:
    """Runs scale `st.scale`: its layers, logits, sampling, next input."""
    si = st.scale
    # Named per scale so that a profile can attribute kernels to scales
    # (bench.profile.profile_summary); no effect on the program.
    with jax.named_scope(f"scale{si:02d}"):
      sp = program.plan.scales[si]
      if st.guided and not sp.guidance:
        # SkipVAR branch drop: from here on only the conditional half runs.
        st = st.drop_uncond()
      st = self._run_layers_of_scale(program, params, st, sp)
      return self._sample_scale(program, vae_params, st, rng=rng,
                                cfg_scale=cfg_scale, tau=tau, forced=forced)

  def finish(self, st: ScaleState) -> Generation:
    """The Generation of a state after its last generated scale."""
    toks = jnp.concatenate(st.tokens, axis=1)
    if self.model.style == "infinity":
      toks = toks.astype(jnp.uint8)
    lg = jnp.concatenate(st.logits, axis=1) if st.logits else None
    return Generation(tokens=toks, latent=st.latent, logits=lg,
                      entropy=st.entropy or None,
                      finite=jnp.stack(st.finite) if st.finite else None)

  # -- one scale ---------------------------------------------------------------

  def _run_layers_of_scale(self, program: _Program, params, st: ScaleState,
                           sp: plan_lib.ScalePlan) -> ScaleState:
    """All runs of layers of scale `st.scale`: the new residual stream in
    st.x, caches written, probe entropy and branch outputs recorded."""
    cfg, si, b = self.model, st.scale, st.batch
    off = cfg.scale_offsets
    a_tok, e_tok = off[si], off[si + 1]
    n = e_tok - a_tok
    hw = cfg.schedule[si]
    rope = None
    if program.rope_cos is not None:
      rope = (jnp.asarray(program.rope_cos[a_tok:e_tok]),
              jnp.asarray(program.rope_sin[a_tok:e_tok]))
    runs = layout.runs_at_scale(program.plan, si,
                                split_at_probe=sp.probe_layer is not None)
    record_branches = si in program.cache_scales
    x, caches = st.x, list(st.caches)
    # A new dict: the states before this one stay as they were.
    branch_store = dict(st.branch_store)
    idx = None
    probe_entropy = None
    layer_entropy = []
    finite = {}  # first layer of a run -> (layers,) bool
    for run in runs:
      if run.letter == "X":
        continue
      seg = program.seg_of[run.start]
      kc, vc = caches[seg]
      is_probe = (sp.probe_layer is not None
                  and run.start == sp.probe_layer == run.stop - 1)
      want_entropy = is_probe or self.sampling.record_entropy
      if self._unrolled(run, sp, n) and st.layer_params is None:
        layer_params, layer_tkv = layer_runs.layer_copies(
            params["blocks"], st.text_kv, cfg.depth)
        st = st.replace(layer_params=layer_params, layer_text_kv=layer_tkv)
      r = layer_runs.LayerRun(self, program, params, st, run, sp, si, n,
                              unrolled=self._unrolled(run, sp, n))
      if run.letter == "F":
        x, kc, vc, ent, branches = r.full(x, kc, vc, rope,
                                          want_entropy=want_entropy,
                                          record=record_branches)
        if want_entropy:
          if is_probe:
            probe_entropy = ent[0]
          layer_entropy.append((run.start, ent))
        if record_branches:  # tuple of (layers, rows, n, C)
          for j, l in enumerate(range(run.start, run.stop)):
            branch_store.setdefault(si, {})[l] = tuple(t[j] for t in branches)
      else:  # "S"
        if idx is None and sp.select == "scale":
          idx = self._choose(x, sp, hw, n, b, probe_entropy, st)
        if sp.select == "scale" and sp.restore == "passthrough":
          x, kc, vc = r.sparse_gathered(x, kc, vc, rope, idx)
        else:
          x, kc, vc = r.sparse(x, kc, vc, rope, idx, hw, branch_store)
      caches[seg] = (kc, vc)
      finite.update({run.start: r.finite} if r.finite is not None else {})

    if probe_entropy is not None:
      st = st.replace(prev_entropy=probe_entropy, prev_hw=hw)
    entropy = st.entropy
    if self.sampling.record_entropy:
      entropy = entropy + (_assemble_entropy(layer_entropy, cfg.depth, b, n),)
    if self.execution.check_finite:
      st = st.replace(layer_finite=layer_runs.layer_flags(finite, cfg.depth))
    return st.replace(x=x, caches=tuple(caches), branch_store=branch_store,
                      entropy=entropy)

  def _choose(self, x, sp, hw, n, b, probe_entropy, st: ScaleState) -> Array:
    """Kept indices (R, K) for a kept set chosen once per scale."""
    if sp.keep == n and sp.scorer == "none":
      return jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32),
                              (x.shape[0], n))
    if sp.scorer == "frequency":
      scores = selection.frequency_scores(x)
    elif sp.entropy_from == "probe":
      scores = selection.entropy_keep_scores(probe_entropy)
    else:
      scores = selection.entropy_keep_scores(
          selection.resize_entropy(st.prev_entropy, st.prev_hw, hw))
    return selection.select(scores, sp.keep, share_cfg=sp.share_cfg, batch=b)

  def _sample_scale(self, program: _Program, vae_params, st: ScaleState, *,
                    rng: Array, cfg_scale: Array, tau: Array,
                    forced: Optional[Array]) -> ScaleState:
    """Logits of st.x, guidance, the choices, the latent and the next input;
    returns the state before the next scale."""
    cfg, si, b = self.model, st.scale, st.batch
    a_tok, e_tok = cfg.scale_offsets[si], cfg.scale_offsets[si + 1]
    n = e_tok - a_tok
    stem, acc = program.stem, program.acc
    logits = stem.apply(program.sp_stem, st.x, st.cond.cond,
                        method=transformer.Stem.logits)
    logits = logits.astype(jnp.float32)
    if cfg.style == "var":
      guided_logits = (strategies.guide_var(logits, cfg_scale, si,
                                            cfg.num_scales)
                       if st.guided else logits)
      choice = strategies.sample_rows(strategies.scale_keys(rng, si),
                                      guided_logits, top_k=self.sampling.top_k,
                                      top_p=self.sampling.top_p)
    else:
      guided_logits = (strategies.guide_infinity(logits, cfg_scale, tau)
                       if st.guided else logits / tau)
      pairs = guided_logits.reshape(b, n, cfg.latent_dim, 2)
      choice = strategies.sample_rows(strategies.scale_keys(rng, si), pairs,
                                      top_k=min(self.sampling.top_k, 2),
                                      top_p=self.sampling.top_p)
    if forced is not None:
      choice = forced[:, a_tok:e_tok].astype(jnp.int32)
    finite = st.finite + ((jnp.append(st.layer_finite, jnp.isfinite(
        logits).all()),) if self.execution.check_finite else ())
    logits_so_far = st.logits
    if self.sampling.return_logits:
      logits_so_far = logits_so_far + (guided_logits,)
    latent = acc.add(vae_params, st.latent, choice, si)
    x = st.x
    if si < program.num_gen - 1:
      feat = acc.next_input(vae_params, latent, si + 1)
      x = stem.apply(program.sp_stem, feat, si + 1,
                     method=transformer.Stem.embed)
      if st.guided:
        x = jnp.concatenate([x, x], axis=0)
    return st.replace(x=x, latent=latent, tokens=st.tokens + (choice,),
                      logits=logits_so_far, scale=si + 1, finite=finite)


def _assemble_entropy(parts, depth: int, b: int, n: int) -> Array:
  """Per-layer entropy of the conditional rows (L, B, N); NaN where a layer
  did not record it (X / S layers)."""
  out = jnp.full((depth, b, n), jnp.nan, jnp.float32)
  for start, ent in parts:
    out = out.at[start:start + ent.shape[0]].set(ent[:, :b].astype(jnp.float32))
  return out
