"""The next-scale transformer: one family, two conditioning styles.

A functional model: parameters are a plain pytree
  {"stem": <Stem params>, "blocks": <Block params stacked on a leading L axis>}
and the pieces are applied explicitly, so that the sampler can run any static
sparsity plan (runs of layers under `lax.scan`, per-layer KV caches, gathers)
without the model knowing about plans.

  Stem     conditioning (class / text), token embedding, level + position
           embedding, AdaLN head. VAR: class table, abs positions. Infinity:
           RMS-normed T5 features, attention-pooled SOS, text projection for
           cross-attention, shared AdaLN.
  Block    layers.Block, one per layer, stacked.

Dimension letters: B batch, L tokens of the whole sequence, N tokens of one
scale, C width, T text tokens, Ct text feature width, V logits per token.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Dict, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax.models import config as config_lib
from toprovar_jax.models import layers

Array = jax.Array
Params = Dict[str, Any]


@flax.struct.dataclass
class Conditioning:
  """Per-sample conditioning, computed once per generation.

  Attributes:
    cond: (B, C) class embedding / pooled text (AdaLN head input, SOS).
    ada_in: (B, C) (per-block AdaLN) or (B, 6, C) (shared AdaLN output).
    x0: (B, 1, C) input of the first (1×1) scale, embeddings included.
    text: (B, T, C) text tokens projected for cross-attention (Infinity) or
      None.
    text_mask: (B, T) bool, True = real token (Infinity) or None.
  """
  cond: Array
  ada_in: Array
  x0: Array
  text: Optional[Array] = None
  text_mask: Optional[Array] = None


def _trunc_normal(std):
  return nn.initializers.truncated_normal(stddev=std)


class Stem(nn.Module):
  """Everything outside the blocks (see module docstring)."""
  cfg: config_lib.TransformerConfig
  dtype: Any = jnp.float32

  def setup(self):
    cfg = self.cfg
    c = cfg.width
    std = math.sqrt(1.0 / c / 3.0)
    self.word_embed = nn.Dense(c, name="word_embed")
    self.lvl_embed = nn.Embed(cfg.num_level_embeds, c, embedding_init=_trunc_normal(std),
                              name="lvl_embed")
    self.pos_start = self.param("pos_start", _trunc_normal(std), (c,))
    if cfg.style == "var":
      self.class_emb = nn.Embed(cfg.num_classes + 1, c,
                                embedding_init=_trunc_normal(std),
                                name="class_emb")
      self.pos_1LC = self.param("pos_1LC", _trunc_normal(std), (cfg.seq_len, c))
    else:
      hp, dp = cfg.pool_num_heads, c // cfg.pool_num_heads
      self.cfg_uncond = self.param(
          "cfg_uncond", _trunc_normal(1.2 / math.sqrt(cfg.text_dim)),
          (cfg.text_maxlen, cfg.text_dim))
      self.text_norm_weight = self.param("text_norm", nn.initializers.ones,
                                         (cfg.text_dim,))
      self.pool_q = self.param("pool_q", _trunc_normal(std), (hp, dp))
      self.pool_kv = nn.Dense(2 * c, use_bias=False, name="pool_kv")
      self.pool_v_bias = self.param("pool_v_bias", nn.initializers.zeros, (c,))
      self.pool_proj = nn.Dense(c, name="pool_proj")
      self.text_proj_0 = nn.Dense(c, name="text_proj_0")
      self.text_proj_2 = nn.Dense(c, name="text_proj_2")
    if cfg.shared_aln:
      self.shared_ada_lin = nn.Dense(6 * c, name="shared_ada_lin")
    self.head_nm = nn.Dense(2 * c, name="head_nm")
    self.head = nn.Dense(cfg.head_out, name="head")

  # -- conditioning -----------------------------------------------------------

  def _text_norm(self, text: Array) -> Array:
    t = text.astype(jnp.float32)
    t = t * jax.lax.rsqrt(jnp.mean(jnp.square(t), -1, keepdims=True)
                          + self.cfg.norm_eps)
    return t * self.text_norm_weight

  def _pool(self, text_n: Array, text_mask: Array) -> Array:
    """Attention pooling with one learned query per head -> (B, C)."""
    cfg = self.cfg
    b, t, _ = text_n.shape
    hp, dp = cfg.pool_num_heads, cfg.width // cfg.pool_num_heads
    bias = jnp.concatenate([jnp.zeros_like(self.pool_v_bias), self.pool_v_bias])
    kv = (self.pool_kv(text_n) + bias).reshape(b, t, 2, hp, dp)
    s = jnp.einsum("hd,bthd->bht", self.pool_q, kv[:, :, 0]) / math.sqrt(dp)
    s = jnp.where(text_mask[:, None, :], s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    o = jnp.einsum("bht,bthd->bhd", p, kv[:, :, 1]).reshape(b, cfg.width)
    return self.pool_proj(o)

  def uncond_text(self, text_mask: Array) -> Array:
    """The unconditional branch's text: cfg_uncond[:T_i] for every prompt."""
    t = text_mask.shape[1]
    if t > self.cfg.text_maxlen:
      raise ValueError(f"text length {t} exceeds text_maxlen "
                       f"{self.cfg.text_maxlen}")
    return jnp.broadcast_to(self.cfg_uncond[:t],
                            (text_mask.shape[0], t, self.cfg.text_dim))

  def condition(self, labels: Optional[Array] = None,
                text: Optional[Array] = None,
                text_mask: Optional[Array] = None) -> Conditioning:
    """Class labels (B,) or text (B, T, Ct) + mask (B, T) -> Conditioning."""
    cfg = self.cfg
    if cfg.style == "var":
      cond = self.class_emb(labels)
      x0 = (cond + self.pos_start + self.lvl_embed.embedding[0]
            + self.pos_1LC[0])[:, None, :]
      tproj = None
    else:
      text_n = self._text_norm(text)
      cond = self._pool(text_n, text_mask)
      # Official order: sos + pos_start, then the level embedding before
      # block 0 (add_lvl_embeding_only_first_block).
      x0 = (cond + self.pos_start + self.lvl_embed.embedding[0])[:, None, :]
      tproj = self.text_proj_2(layers.gelu_tanh(self.text_proj_0(text_n)))
    if cfg.shared_aln:
      ada_in = self.shared_ada_lin(jax.nn.silu(cond)).reshape(-1, 6, cfg.width)
    else:
      ada_in = cond
    return Conditioning(cond=cond, ada_in=ada_in, x0=x0, text=tproj,
                        text_mask=text_mask)

  # -- tokens -----------------------------------------------------------------

  def embed(self, feat: Array, si: int) -> Array:
    """Next-scale input features (B, N_si, latent) -> (B, N_si, C) fp32."""
    cfg = self.cfg
    x = self.word_embed(feat.astype(jnp.float32)) + self.lvl_embed.embedding[si]
    if cfg.style == "var":
      a, b = cfg.scale_offsets[si], cfg.scale_offsets[si + 1]
      x = x + self.pos_1LC[a:b]
    return x

  def logits(self, x: Array, cond: Array) -> Array:
    """AdaLN head: (B, N, C) -> (B, N, V) fp32."""
    c = self.cfg.width
    ss = self.head_nm(jax.nn.silu(cond.astype(jnp.float32))).reshape(-1, 1, 2, c)
    h = layers.layer_norm(x, self.cfg.norm_eps) * (1.0 + ss[:, :, 0]) + ss[:, :, 1]
    return self.head(h)

  def __call__(self, labels=None, text=None, text_mask=None):
    """Init-only path that touches every parameter."""
    cfg = self.cfg
    cond = self.condition(labels=labels, text=text, text_mask=text_mask)
    if cfg.style == "infinity":
      self.uncond_text(text_mask)
    x = self.embed(jnp.zeros((cond.cond.shape[0], 1, cfg.latent_dim)), 0)
    return self.logits(x + cond.x0, cond.cond)


def stem_module(cfg, dtype=jnp.float32) -> Stem:
  return Stem(cfg, dtype)


def block_module(cfg, dtype=jnp.float32) -> layers.Block:
  return layers.Block(cfg, dtype)


def _dummy_inputs(cfg, batch=1):
  if cfg.style == "var":
    return dict(labels=jnp.zeros((batch,), jnp.int32))
  t = 4
  return dict(text=jnp.zeros((batch, t, cfg.text_dim), jnp.float32),
              text_mask=jnp.ones((batch, t), bool))


def init_params(cfg: config_lib.TransformerConfig, rng: Array) -> Params:
  """Random parameters (fp32): {"stem": ..., "blocks": stacked over depth}."""
  k_stem, k_blocks = jax.random.split(rng)
  stem = stem_module(cfg)
  stem_params = stem.init(k_stem, **_dummy_inputs(cfg))["params"]
  block = block_module(cfg)

  def init_block(key):
    x = jnp.zeros((1, 1, cfg.width))
    ada = jnp.zeros((1, 6, cfg.width) if cfg.shared_aln else (1, cfg.width))
    kw = {}
    if cfg.style == "infinity":
      tk = jnp.zeros((1, 1, cfg.num_heads, cfg.head_dim))
      kw = dict(text_kv=(tk, tk), text_mask=jnp.ones((1, 1), bool))
    v = block.init(key, x, ada, **kw)["params"]
    if cfg.style == "infinity":
      # text_kv() is a separate method; make sure its params exist.
      v2 = block.init(key, jnp.zeros((1, 1, cfg.width)),
                      method=layers.Block.text_kv)["params"]
      v = {**v, "ca": {**v["ca"], **v2["ca"]}}
    return v

  blocks = jax.vmap(init_block)(jax.random.split(k_blocks, cfg.depth))
  return {"stem": stem_params, "blocks": blocks}


def param_count(cfg: config_lib.TransformerConfig) -> int:
  """Exact number of parameters, without allocating (jax.eval_shape)."""
  shapes = jax.eval_shape(functools.partial(init_params, cfg),
                          jax.random.key(0))
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))


# -- whole-sequence (teacher-forced) forward -----------------------------------


def block_causal_mask(cfg: config_lib.TransformerConfig) -> np.ndarray:
  """(L, L) bool: a query at scale i sees keys of scales ≤ i."""
  lvl = np.concatenate([np.full(n, s) for s, n in enumerate(cfg.tokens_per_scale)])
  return lvl[:, None] >= lvl[None, :]


def text_kv_all(params: Params, cfg, text: Array, dtype=jnp.float32):
  """Per-layer cross-attention (k, v), stacked: each (L, B, T, H, D)."""
  block = block_module(cfg, dtype)
  return jax.vmap(lambda p: block.apply({"params": p}, text,
                                        method=layers.Block.text_kv))(
                                            params["blocks"])


def teacher_forced_logits(params: Params, cfg: config_lib.TransformerConfig, *,
                          inputs: Array, labels: Optional[Array] = None,
                          text: Optional[Array] = None,
                          text_mask: Optional[Array] = None,
                          dtype=jnp.float32, impl: str = "xla",
                          remat: bool = False) -> Array:
  """Training-style forward over the whole sequence with the block mask.

  Args:
    params: model params.
    cfg: model config.
    inputs: (B, L - 1, latent) next-scale inputs of scales 1..S-1, flattened
      (VAR `x_BLCv_wo_first_l`, Infinity `x_BLC_wo_prefix`).
    labels / text + text_mask: conditioning (see Stem.condition).
    remat: recompute each block in the backward pass (`jax.checkpoint`)
      instead of keeping its activations: with XLA attention a block keeps
      its (B, H, L, L) probabilities, which at the emoji model's L = 2,304
      and batch 64 is ~4 GB a layer. Same values either way.
  Returns:
    (B, L, V) fp32 logits; position l predicts token l.
  """
  stem = stem_module(cfg, dtype)
  sp = {"params": params["stem"]}
  cond = stem.apply(sp, labels=labels, text=text, text_mask=text_mask,
                    method=Stem.condition)
  xs = [cond.x0]
  off = cfg.scale_offsets
  for si in range(1, cfg.num_scales):
    feat = inputs[:, off[si] - 1:off[si + 1] - 1]
    xs.append(stem.apply(sp, feat, si, method=Stem.embed))
  x = jnp.concatenate(xs, axis=1)
  mask = jnp.asarray(block_causal_mask(cfg))
  rope = None
  if cfg.style == "infinity":
    cos, sin = layers.rope_tables(layers.rope_positions(cfg), cfg.head_dim,
                                  cfg.rope_base)
    rope = (jnp.asarray(cos), jnp.asarray(sin))
    tkv = text_kv_all(params, cfg, cond.text, dtype)
  block = block_module(cfg, dtype)

  def body(x, xs_l):
    p, kv = xs_l
    kw = {}
    if cfg.style == "infinity":
      kw = dict(text_kv=kv, text_mask=cond.text_mask)
    x, _ = block.apply({"params": p}, x, cond.ada_in, rope=rope, mask=mask,
                       impl=impl, **kw)
    return x, None

  if remat:
    body = jax.checkpoint(body)
  x, _ = jax.lax.scan(body, x, (params["blocks"],
                                tkv if cfg.style == "infinity" else None))
  return stem.apply(sp, x, cond.cond, method=Stem.logits)
