"""The scale loop: one jitted function generates a batch over all scales.

Design (SPEC §2, STYLE.md §8.2):
  * Python `for` over scales inside jit (every scale has its own static shape);
    `lax.scan` over runs of layers inside a scale.
  * Classifier-free guidance doubles the batch: rows [cond; uncond].
  * Explicit fixed-size KV cache per layer, written at static offsets. Keys of
    the last generated scale are never read again, so the cache holds only the
    scales before it.
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
from toprovar_jax.sampling import plan as plan_lib
from toprovar_jax.sampling import strategies

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
  """Static sampling rules.

  Attributes:
    top_k: keep the k largest logits (0 = off; 1 = greedy). Infinity's bit
      pairs make any k ≥ 2 a no-op, as in the official code.
    top_p: nucleus threshold (0 = off).
    return_logits: also return the guided logits of every scale (parity and
      analysis; costs B·L·V floats).
    attn_impl: attention implementation ("xla", "cudnn", "pallas", "auto").
    dtype: compute dtype name of the transformer ("float32" / "bfloat16").
  """
  top_k: int = 0
  top_p: float = 0.0
  return_logits: bool = False
  attn_impl: str = "xla"
  dtype: str = "float32"


@flax.struct.dataclass
class Generation:
  """What one call of the sampler returns.

  Attributes:
    tokens: VAR (B, L) int32 code indices; Infinity (B, L, d) uint8 bits.
    latent: VAR f̂ (B, Hf, Wf, Cvae); Infinity summed codes (B, Hf, Wf, d').
      Scales at or past the plan's exit are absent from both.
    logits: guided logits (B, L, V) when `return_logits`, else None.
  """
  tokens: Array
  latent: Array
  logits: Optional[Array] = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sampler:
  """Static description of one generation program (hashable: jit's `self`)."""
  model: config_lib.TransformerConfig
  tokenizer: Any
  sampling: SamplingConfig = SamplingConfig()
  plan: Optional[plan_lib.SparsityPlan] = None

  def __post_init__(self):
    if self.plan is not None:
      plan_lib.validate_plan(self.plan, self.model)

  @property
  def resolved_plan(self) -> plan_lib.SparsityPlan:
    return self.plan if self.plan is not None else plan_lib.dense_plan(self.model)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.sampling.dtype)

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
    """
    return self._generate(params, vae_params, rng, cfg_scale, tau, labels,
                          text, text_mask, forced)

  def _generate(self, params, vae_params, rng, cfg_scale, tau, labels, text,
                text_mask, forced) -> Generation:
    cfg = self.model
    plan = self.resolved_plan
    _require_dense(plan, cfg)
    dtype = self.compute_dtype
    stem = transformer.stem_module(cfg, dtype)
    sp = {"params": params["stem"]}
    acc = latents_lib.for_model(cfg, self.tokenizer)

    # -- conditioning for the doubled batch [cond; uncond] --------------------
    if cfg.style == "var":
      b = labels.shape[0]
      lab2 = jnp.concatenate([labels, jnp.full_like(labels, cfg.num_classes)])
      cond = stem.apply(sp, labels=lab2, method=transformer.Stem.condition)
      tkv = None
    else:
      b = text.shape[0]
      unc = stem.apply(sp, text_mask, method=transformer.Stem.uncond_text)
      cond = stem.apply(sp, text=jnp.concatenate([text, unc]),
                        text_mask=jnp.concatenate([text_mask, text_mask]),
                        method=transformer.Stem.condition)
      tkv = transformer.text_kv_all(params, cfg, cond.text.astype(dtype), dtype)
      rope_cos, rope_sin = layers.rope_tables(
          layers.rope_positions(cfg), cfg.head_dim, cfg.rope_base)

    num_gen = plan.exit_scale if plan.exit_scale is not None else cfg.num_scales
    off = cfg.scale_offsets
    cap = off[num_gen - 1]  # cache: every generated scale but the last
    h, dh = cfg.num_heads, cfg.head_dim
    k_cache = jnp.zeros((cfg.depth, 2 * b, cap, h, dh), dtype)
    v_cache = jnp.zeros_like(k_cache)
    block = transformer.block_module(cfg, dtype)
    impl = self.sampling.attn_impl

    latent = acc.init(b)
    x = cond.x0
    tokens, all_logits = [], []
    for si in range(num_gen):
      a, e = off[si], off[si + 1]
      rope = None
      if cfg.style == "infinity":
        rope = (jnp.asarray(rope_cos[a:e]), jnp.asarray(rope_sin[a:e]))

      def body(x, xs, si=si, a=a, e=e, rope=rope):
        p, kc, vc, tkv_l = xs
        prefix = (kc[:, :a], vc[:, :a]) if a > 0 else None
        kw = {}
        if cfg.style == "infinity":
          kw = dict(text_kv=tkv_l, text_mask=cond.text_mask)
        x, (k, v) = block.apply({"params": p}, x, cond.ada_in, rope=rope,
                                kv_prefix=prefix, impl=impl, **kw)
        if si < num_gen - 1:
          kc = jax.lax.dynamic_update_slice(kc, k.astype(kc.dtype), (0, a, 0, 0))
          vc = jax.lax.dynamic_update_slice(vc, v.astype(vc.dtype), (0, a, 0, 0))
        return x, (kc, vc)

      x, (k_cache, v_cache) = jax.lax.scan(
          body, x, (params["blocks"], k_cache, v_cache, tkv))
      logits = stem.apply(sp, x, cond.cond, method=transformer.Stem.logits)
      logits = logits.astype(jnp.float32)
      if cfg.style == "var":
        guided = strategies.guide_var(logits, cfg_scale, si, cfg.num_scales)
        choice = strategies.sample(jax.random.fold_in(rng, si), guided,
                                   top_k=self.sampling.top_k,
                                   top_p=self.sampling.top_p)
        if forced is not None:
          choice = forced[:, a:e].astype(jnp.int32)
      else:
        guided = strategies.guide_infinity(logits, cfg_scale, tau)
        pairs = guided.reshape(b, e - a, cfg.latent_dim, 2)
        choice = strategies.sample(jax.random.fold_in(rng, si), pairs,
                                   top_k=min(self.sampling.top_k, 2),
                                   top_p=self.sampling.top_p)
        if forced is not None:
          choice = forced[:, a:e].astype(jnp.int32)
      tokens.append(choice)
      if self.sampling.return_logits:
        all_logits.append(guided)
      latent = acc.add(vae_params, latent, choice, si)
      if si < num_gen - 1:
        feat = acc.next_input(vae_params, latent, si + 1)
        x = stem.apply(sp, feat, si + 1, method=transformer.Stem.embed)
        x = jnp.concatenate([x, x], axis=0)

    toks = jnp.concatenate(tokens, axis=1)
    if cfg.style == "infinity":
      toks = toks.astype(jnp.uint8)
    lg = jnp.concatenate(all_logits, axis=1) if all_logits else None
    return Generation(tokens=toks, latent=latent, logits=lg)


def _require_dense(plan: plan_lib.SparsityPlan, cfg) -> None:
  """Step 1 executes the all-F plan; sparse execution lands with step 2."""
  dense = plan_lib.dense_plan(cfg)
  if plan.scales != dense.scales or plan.exit_scale is not None:
    raise NotImplementedError(
        f"plan {plan.name!r}: only the dense (all-F) plan executes in this "
        "version; sparse execution is issue 3 (step 2).")
