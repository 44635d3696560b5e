"""Flan-T5 (T5 v1.1) encoder: a pure linen module, Infinity's text encoder.

Infinity conditions on the `last_hidden_state` of the Flan-T5-XL encoder
(SPEC §1, ARCHITECTURES B.2). This module only computes; converting the
public safetensors lives in `toprovar_jax/convert/t5.py` (STYLE.md §9.2).

Architecture, as pinned by the tiny golden file (reference README §9-§10):
* Embedding: a plain table lookup, no sqrt(d_model) scaling.
* Pre-norm blocks: x += Attn(RMSNorm(x)); x += FFN(RMSNorm(x)); a final
  RMSNorm after the last block. RMSNorm is w * x / sqrt(mean(x^2) + eps),
  with no mean subtraction and no bias. There are no biases anywhere.
* Attention: scores are q.k with **no** 1/sqrt(D) (T5 folds it into the
  init), plus a relative position bias, plus the key padding mask. Each head
  is a contiguous D-row block of the q/k/v weights.
* Position bias: one (buckets, H) table, owned by block 0 in the checkpoint,
  computed once and reused unchanged by every block. Buckets are
  bidirectional (`relative_position_bucket`).
* FFN ("gated-gelu"): wo(gelu_tanh(wi_0 x) * wi_1 x). The tanh GELU
  ("gelu_new"), not erf: erf is off by 6.4e-4 on the golden file.
* Mask: padded keys get float32's most negative score; padded queries are
  still computed (their outputs are junk, as in torch).

Dimension letters: B batch, L tokens, C width (d_model), H heads, D head dim
(d_kv), F FFN width (d_ff), V vocabulary, R relative-position buckets.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Collection that `T5Encoder` sows its diagnostics into (see `encode`).
INTERMEDIATES = "intermediates"

_INIT = nn.initializers.normal(stddev=0.05)  # Only shapes matter here.


@dataclasses.dataclass(frozen=True, kw_only=True)
class T5Config:
  """Static T5 encoder hyper-parameters (hashable, a valid jit static arg).

  Field names follow HF `T5Config`, so a config.json maps one to one.
  """
  vocab_size: int
  d_model: int
  d_kv: int
  num_heads: int
  d_ff: int
  num_layers: int
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  # Only T5 v1.1 / Flan-T5's gated tanh-GELU FFN is implemented; original T5
  # ("relu", ungated) checkpoints are rejected by the converter.
  feed_forward_proj: str = "gated-gelu"
  # Compute dtype of the matmuls; params and RMSNorm statistics stay fp32.
  dtype: Any = jnp.float32
  # Full fp32 matmuls by default: the features are frozen conditioning, and
  # TF32 / bf16 passes would move them by ~1e-3 (reference README §12).
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

  def __post_init__(self):
    if self.feed_forward_proj != "gated-gelu":
      raise ValueError(f"feed_forward_proj={self.feed_forward_proj!r}: only "
                       "'gated-gelu' (T5 v1.1 / Flan-T5) is implemented")
    if self.relative_attention_num_buckets % 2:
      raise ValueError("relative_attention_num_buckets must be even "
                       "(bidirectional: half per direction)")

  @property
  def inner_dim(self) -> int:
    """H * D, the width of the q/k/v projections (2048 for Flan-T5-XL)."""
    return self.num_heads * self.d_kv

  @classmethod
  def flan_t5_xl(cls, **overrides) -> "T5Config":
    """google/flan-t5-xl's encoder (its config.json; ARCHITECTURES B.2).

    d_model 2048, 24 layers, 32 heads of 64, gated-GELU FFN 5120,
    vocabulary 32128 (the sentencepiece 32000 padded to a multiple of 128),
    32 buckets up to distance 128, eps 1e-6: 1,223,527,424 parameters.
    """
    return cls(**{**dict(vocab_size=32128, d_model=2048, d_kv=64,
                         num_heads=32, d_ff=5120, num_layers=24), **overrides})

  @classmethod
  def tiny(cls, **overrides) -> "T5Config":
    """The golden file's encoder (reference README §9): 115,136 params."""
    return cls(**{**dict(vocab_size=512, d_model=64, d_kv=16, num_heads=4,
                         d_ff=128, num_layers=2), **overrides})


# ----------------------------------------------------------------------------
# Relative position bias.
# ----------------------------------------------------------------------------


def relative_position_bucket(relative_position, *, num_buckets: int = 32,
                             max_distance: int = 128) -> np.ndarray:
  """Bidirectional T5 bucket of each key - query offset (host-side numpy).

  Half the buckets per direction; a positive offset (key after query) adds
  num_buckets / 2. Within a direction, |r| < num_buckets / 4 is its own
  bucket, larger |r| are log-spaced up to `max_distance` and capped at the
  last bucket of the direction.

  Computed in numpy float32 with torch's order of operations, at trace time
  (every offset is known from the static sequence length). This keeps the
  ids independent of the device's `log` approximation at the exact bucket
  boundaries |r| = 16, 32, 64, where the float result is an integer.

  Args:
    relative_position: int array of key - query offsets, any shape.
    num_buckets: total buckets (both directions).
    max_distance: offsets beyond this share the last bucket.

  Returns:
    int32 array of bucket ids in [0, num_buckets), same shape.
  """
  r = np.asarray(relative_position, np.int64)
  half = num_buckets // 2
  exact = half // 2
  base = np.where(r > 0, half, 0)
  a = np.abs(r)
  # max(a, exact) only keeps log() finite where the small branch is used.
  ratio = np.maximum(a, exact).astype(np.float32) / np.float32(exact)
  large = exact + (np.log(ratio) / np.float32(math.log(max_distance / exact))
                   * np.float32(half - exact)).astype(np.int64)
  large = np.minimum(large, half - 1)
  return (base + np.where(a < exact, a, large)).astype(np.int32)


def position_bias(table_RH: Array, q_len: int, k_len: int, *,
                  num_buckets: int, max_distance: int) -> Array:
  """The additive attention bias, bias[h, i, j] = table[bucket(j - i), h].

  Args:
    table_RH: (R, H) learned bias table.
    q_len, k_len: static query and key lengths.
    num_buckets, max_distance: the bucket function's parameters.

  Returns:
    (H, q_len, k_len) bias, exactly the table's values (a gather).
  """
  # One bucket per distinct offset (q_len + k_len - 1 of them, a small
  # constant), gathered in-graph into the (Q, K) grid by index arithmetic.
  offsets = np.arange(-(q_len - 1), k_len)
  buckets = relative_position_bucket(offsets, num_buckets=num_buckets,
                                     max_distance=max_distance)
  per_offset_OH = jnp.take(table_RH, jnp.asarray(buckets), axis=0)
  index_QK = (jnp.arange(k_len)[None, :] - jnp.arange(q_len)[:, None]
              + (q_len - 1))
  return jnp.transpose(per_offset_OH[index_QK], (2, 0, 1))


# ----------------------------------------------------------------------------
# Modules.
# ----------------------------------------------------------------------------


class RMSNorm(nn.Module):
  """T5's LayerNorm: w * x / sqrt(mean(x^2) + eps); no mean, no bias."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Args: x (..., C). Returns (..., C) in the compute dtype."""
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],),
                       jnp.float32)
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + self.config.layer_norm_epsilon)
    dtype = self.config.dtype
    return scale.astype(dtype) * y.astype(dtype)


def _dense(config: T5Config, features: int, name: str) -> nn.Dense:
  return nn.Dense(features, use_bias=False, kernel_init=_INIT,
                  dtype=config.dtype, precision=config.precision, name=name)


class SelfAttention(nn.Module):
  """Bidirectional multi-head attention with an additive bias (no scaling)."""
  config: T5Config

  @nn.compact
  def __call__(self, x_BLC: Array, bias_BHLL: Array) -> Array:
    """Attends with the position bias and key mask folded into one bias.

    Args:
      x_BLC: (B, L, C) normalised hidden states.
      bias_BHLL: (B or 1, H, L, L) fp32 additive bias (position bias, with
        float32's most negative value at padded keys).

    Returns:
      (B, L, C) output of the `o` projection (no residual).
    """
    cfg = self.config
    b, l, _ = x_BLC.shape
    h, d = cfg.num_heads, cfg.d_kv

    def heads(name):
      return _dense(cfg, cfg.inner_dim, name)(x_BLC).reshape(b, l, h, d)

    q_BLHD, k_BLHD, v_BLHD = heads("q"), heads("k"), heads("v")
    # No 1/sqrt(D): T5 scales the q init instead (README §9).
    scores_BHLL = jnp.einsum("bqhd,bkhd->bhqk", q_BLHD, k_BLHD,
                             precision=cfg.precision).astype(jnp.float32)
    # Softmax in fp32 as torch does (`scores.float()`); a masked key's score
    # is float32's most negative value, so its weight is exactly 0.
    probs_BHLL = jax.nn.softmax(scores_BHLL + bias_BHLL, axis=-1)
    out_BLHD = jnp.einsum("bhqk,bkhd->bqhd", probs_BHLL.astype(cfg.dtype),
                          v_BLHD, precision=cfg.precision)
    return _dense(cfg, cfg.d_model, "o")(out_BLHD.reshape(b, l, h * d))


class GatedGeluFFN(nn.Module):
  """wo(gelu_tanh(wi_0 x) * wi_1 x) (HF `T5DenseGatedActDense`)."""
  config: T5Config

  @nn.compact
  def __call__(self, x_BLC: Array) -> Array:
    """Args: x_BLC (B, L, C). Returns (B, L, C)."""
    cfg = self.config
    gate_BLF = jax.nn.gelu(_dense(cfg, cfg.d_ff, "wi_0")(x_BLC),
                           approximate=True)  # "gelu_new" = tanh form.
    return _dense(cfg, cfg.d_model, "wo")(
        gate_BLF * _dense(cfg, cfg.d_ff, "wi_1")(x_BLC))


class EncoderBlock(nn.Module):
  """x += Attn(RMSNorm(x)); x += FFN(RMSNorm(x))."""
  config: T5Config

  @nn.compact
  def __call__(self, x_BLC: Array, bias_BHLL: Array) -> Array:
    """Args: x_BLC (B, L, C); bias_BHLL as in `SelfAttention`.

    Returns:
      (B, L, C) residual stream after the block.
    """
    cfg = self.config
    x_BLC = x_BLC + SelfAttention(cfg, name="attention")(
        RMSNorm(cfg, name="attention_norm")(x_BLC), bias_BHLL)
    return x_BLC + GatedGeluFFN(cfg, name="mlp")(
        RMSNorm(cfg, name="mlp_norm")(x_BLC))


class T5Encoder(nn.Module):
  """The T5 encoder stack; returns `last_hidden_state`.

  Sows into the `INTERMEDIATES` collection (free unless that collection is
  mutable): `embeddings` (B, L, C), `position_bias` (H, L, L) without the
  mask, and one `block_outputs` entry (B, L, C) per block, before the final
  norm. `encode` unpacks them.
  """
  config: T5Config

  @nn.compact
  def __call__(self, input_ids: Array,
               mask: Optional[Array] = None) -> Array:
    """Encodes a right-padded batch of token ids.

    Args:
      input_ids: (B, L) int token ids (EOS = 1 last, PAD = 0 after it).
      mask: (B, L) int or bool, 1/True at real tokens (EOS included); None
        means all real.

    Returns:
      (B, L, C) features after the final RMSNorm, in the compute dtype.
      Positions where `mask` is 0 hold junk (padded queries are computed).
    """
    cfg = self.config
    chex.assert_rank(input_ids, 2)
    b, l = input_ids.shape
    if mask is None:
      mask = jnp.ones((b, l), bool)
    chex.assert_equal_shape([input_ids, mask])

    table_VC = self.param("token_embedding", _INIT,
                          (cfg.vocab_size, cfg.d_model), jnp.float32)
    x_BLC = jnp.take(table_VC, input_ids, axis=0).astype(cfg.dtype)
    self.sow(INTERMEDIATES, "embeddings", x_BLC)

    # Block 0's table in the checkpoint; shared by every block, so it lives
    # here rather than inside a block.
    table_RH = self.param("relative_attention_bias", _INIT,
                          (cfg.relative_attention_num_buckets, cfg.num_heads),
                          jnp.float32)
    bias_HLL = position_bias(
        table_RH, l, l, num_buckets=cfg.relative_attention_num_buckets,
        max_distance=cfg.relative_attention_max_distance)
    self.sow(INTERMEDIATES, "position_bias", bias_HLL)
    bias_BHLL = jnp.where(mask.astype(bool)[:, None, None, :],
                          bias_HLL[None], jnp.finfo(jnp.float32).min)

    for i in range(cfg.num_layers):
      x_BLC = EncoderBlock(cfg, name=f"block_{i}")(x_BLC, bias_BHLL)
      self.sow(INTERMEDIATES, "block_outputs", x_BLC)
    return RMSNorm(cfg, name="final_norm")(x_BLC)


def encode(params, input_ids: Array, mask: Optional[Array] = None, *,
           config: T5Config) -> Dict[str, Array]:
  """Runs the encoder and returns its output with every diagnostic.

  Pure (jit it at the call site with `static_argnames=("config",)`).

  Args:
    params: the `T5Encoder` params tree (e.g. from `convert.t5`).
    input_ids: (B, L) int token ids.
    mask: (B, L) 1 at real tokens, or None.
    config: the architecture.

  Returns:
    {"last_hidden_state": (B, L, C), "embeddings": (B, L, C),
     "block_outputs": (num_layers, B, L, C), "position_bias": (H, L, L)}.
  """
  out, state = T5Encoder(config).apply({"params": params}, input_ids, mask,
                                       mutable=[INTERMEDIATES])
  sown = state[INTERMEDIATES]
  return {"last_hidden_state": out,
          "embeddings": sown["embeddings"][0],
          "block_outputs": jnp.stack(sown["block_outputs"]),
          "position_bias": sown["position_bias"][0]}


def abstract_params(config: T5Config) -> Dict[str, Any]:
  """The `T5Encoder` params tree as ShapeDtypeStructs (nothing allocated)."""
  ids = jax.ShapeDtypeStruct((1, 2), jnp.int32)
  return jax.eval_shape(T5Encoder(config).init, jax.random.key(0),
                        ids)["params"]


def num_params(config: T5Config) -> int:
  """Parameter count of the encoder (the tied embedding counted once)."""
  return int(sum(math.prod(x.shape)
                 for x in jax.tree.leaves(abstract_params(config))))
