"""Transformer building blocks shared by the VAR and Infinity styles.

Pure linen modules, no I/O. Dimension letters: B batch, N tokens (queries of
the current call), P cached prefix tokens, C width, H heads, D head dim,
T text tokens, L_seg layers sharing one stacked KV cache, M cache capacity.

Numerics follow the official code (ARCHITECTURES A.3, B.3): LayerNorm without
affine (eps 1e-6) in fp32, AdaLN chunks ordered (γ1, γ2, s1, s2, b1, b2),
cosine self-attention (q, k L2-normalised, per-head learned scale
exp(min(s, ln 100)) folded into q, softmax scale 1), fused qkv with bias
[q_bias, 0, v_bias], tanh-GELU FFN.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax.models import axes
from toprovar_jax.models import config as config_lib
from toprovar_jax.ops import attention as attention_ops

Array = jax.Array
KV = Tuple[Array, Array]

_MAX_SCALE_MUL = math.log(100.0)


def layer_norm(x: Array, eps: float) -> Array:
  """LayerNorm without affine, fp32, biased variance (torch semantics)."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
  """torch F.normalize: x / max(||x||, eps)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


def gelu_tanh(x: Array) -> Array:
  return jax.nn.gelu(x, approximate=True)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
  """Rotates adjacent pairs (2i, 2i+1) of the head dim (interleaved RoPE).

  Args:
    x: (B, N, H, D).
    cos, sin: (N, D // 2) or (B, N, D // 2) rotation tables.
  Returns:
    (B, N, H, D), same dtype as x; computed in fp32 as the official code
    (which disables autocast around the rotation).
  """
  dtype = x.dtype
  xf = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
  if cos.ndim == 2:
    cos, sin = cos[None], sin[None]
  cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  x0, x1 = xf[..., 0], xf[..., 1]
  out = jnp.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
  return out.reshape(x.shape).astype(dtype)


def gather_tokens(x: Array, idx: Array) -> Array:
  """x (B, N, ...) , idx (B, K) int -> (B, K, ...)."""
  return jnp.take_along_axis(
      x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def scatter_tokens(x: Array, idx: Array, values: Array, *,
                   add: bool) -> Array:
  """Writes (add=False) or adds (add=True) values (B, K, C) at idx (B, K)."""
  b = jnp.arange(x.shape[0])[:, None]
  return x.at[b, idx].add(values) if add else x.at[b, idx].set(values)


def gather_rope(rope, idx: Array):
  """Full-scale (cos, sin) (N, D/2) -> per-row tables at kept positions.

  Kept tokens keep their true 2-D positions (SPEC §3).
  """
  if rope is None:
    return None
  cos, sin = rope
  return cos[idx], sin[idx]


def rope_positions(cfg: config_lib.TransformerConfig) -> np.ndarray:
  """(L, 2) int32 (row, col) of every token on the RoPE grid.

  "Star style" (rope2d_normalized_by_hw=2): token (i, j) of an h×w scale sits
  at round(i·H_f/h), round(j·W_f/w) on the final grid of the 1M template,
  rounding half to even as torch.round on float32 (ARCHITECTURES B.3).
  """
  hf, wf = cfg.rope_grid
  out = []
  for h, w in cfg.schedule:
    rows = np.round(np.arange(h, dtype=np.float32) * np.float32(hf / h))
    cols = np.round(np.arange(w, dtype=np.float32) * np.float32(wf / w))
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    out.append(np.stack([rr.reshape(-1), cc.reshape(-1)], axis=-1))
  return np.concatenate(out, 0).astype(np.int32)


def rope_tables(positions: np.ndarray, head_dim: int,
                base: float = 10000.0) -> Tuple[np.ndarray, np.ndarray]:
  """cos, sin tables (L, D/2) for (row, col) positions.

  The first D/4 rotation pairs turn by row·θ_j, the last D/4 by col·θ_j, with
  θ_j = base^(−2j/(D/2)) (official `precompute_rope2d_freqs_grid`), in fp32.
  """
  half = head_dim // 2
  inv_freq = (1.0 / (np.float32(base) ** (
      np.arange(0, half, 2, dtype=np.float32) / np.float32(half)))).astype(np.float32)
  pos = positions.astype(np.float32)
  ang = np.concatenate([np.outer(pos[:, 0], inv_freq),
                        np.outer(pos[:, 1], inv_freq)], axis=-1).astype(np.float32)
  return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


class KVBuffer(NamedTuple):
  """A segment's stacked KV cache as one layer call sees it.

  The alternative to `kv_prefix` (the sampler's kv_read="buffer"): the layer
  writes the keys/values of its N new tokens into its own cache row at the
  static token offset first, then attends over the whole row with
  kv_len = offset + N, so no prefix is sliced out and concatenated.

  Attributes:
    k, v: (L_seg, B, M, H, D) caches of the segment.
    layer: () int32 row of this layer in the segment (traced).
    offset: static token offset at which the new keys go; the first `offset`
      entries of the row are the earlier scales' keys.
  """
  k: Array
  v: Array
  layer: Array
  offset: int

  def write(self, k_new: Array, v_new: Array) -> "KVBuffer":
    """Writes (B, N, H, D) keys/values at (layer, :, offset) in place."""
    at = (self.layer, 0, self.offset, 0, 0)
    return self._replace(
        k=jax.lax.dynamic_update_slice(self.k, k_new[None].astype(self.k.dtype),
                                       at),
        v=jax.lax.dynamic_update_slice(self.v, v_new[None].astype(self.v.dtype),
                                       at))

  def row(self) -> KV:
    """This layer's (B, M, H, D) keys and values."""
    return (jax.lax.dynamic_index_in_dim(self.k, self.layer, keepdims=False),
            jax.lax.dynamic_index_in_dim(self.v, self.layer, keepdims=False))


class SelfAttention(nn.Module):
  """Cosine self-attention with fused qkv and an explicit KV cache."""
  cfg: config_lib.TransformerConfig
  dtype: Any = jnp.float32

  def setup(self):
    c, h = self.cfg.width, self.cfg.num_heads
    # nn.Dense(3C, use_bias=False)'s parameter, computed head by head
    # (tensor parallelism: axes.HeadsDense).
    self.mat_qkv = axes.HeadsDense(3, h, self.cfg.head_dim, self.dtype,
                                   name="mat_qkv")
    self.q_bias = self.param("q_bias", nn.initializers.zeros, (c,))
    self.v_bias = self.param("v_bias", nn.initializers.zeros, (c,))
    # Initialised at ln 4 like the official scale_mul_1H11.
    self.scale_mul = self.param(
        "scale_mul", nn.initializers.constant(math.log(4.0)), (h,))
    self.proj = nn.Dense(c, dtype=self.dtype, name="proj")

  def qkv(self, x: Array, rope: Optional[Tuple[Array, Array]] = None):
    """Projects (B, N, C) to q, k, v each (B, N, H, D).

    q and k are L2-normalised in fp32 and the per-head scale is folded into q,
    so the attention softmax scale is 1. RoPE (Infinity) is applied after the
    normalisation, as the official code does; rotations keep norms.
    """
    h, d = self.cfg.num_heads, self.cfg.head_dim
    qkv = self.mat_qkv(x)  # (B, N, 3, H, D)
    # The biases [q_bias, 0, v_bias] added per part rather than as one
    # concatenated vector: the same sums, without a concat kernel per layer
    # (the adds fuse into the normalisation and the cache write).
    q = qkv[:, :, 0] + self.q_bias.astype(self.dtype).reshape(h, d)
    k = qkv[:, :, 1]
    v = qkv[:, :, 2] + self.v_bias.astype(self.dtype).reshape(h, d)
    scale = jnp.exp(jnp.minimum(self.scale_mul, _MAX_SCALE_MUL))
    q = l2_normalize(q.astype(jnp.float32)) * scale[:, None]
    k = l2_normalize(k.astype(jnp.float32))
    if rope is not None:
      q = apply_rope(q, *rope)
      k = apply_rope(k, *rope)
    heads = (axes.BATCH, None, axes.HEADS, None)
    return (axes.constrain(q.astype(self.dtype), heads),
            axes.constrain(k.astype(self.dtype), heads),
            axes.constrain(v, heads))

  def __call__(self, x: Array, *, rope=None, kv_prefix: Optional[KV] = None,
               kv_buffer: Optional[KVBuffer] = None,
               mask: Optional[Array] = None, impl: str = "xla",
               return_entropy: bool = False):
    """Self-attention of N new tokens over [cached prefix, themselves].

    Args:
      x: (B, N, C) normalised + modulated input.
      rope: optional (cos, sin) for these N tokens.
      kv_prefix: optional (k, v) each (B, P, H, D): keys/values of earlier
        scales (the KV cache, already RoPE-rotated).
      kv_buffer: instead of kv_prefix, the segment cache with this layer's
        row and write offset P: the N new keys are written at P, then the
        tokens attend over the row's first P + N keys (no concatenation).
      mask: optional bool (N, P + N) attention mask (teacher forcing); with
        kv_buffer it spans all M columns of the row.
      impl: attention implementation (ops.attention).
      return_entropy: also return the head-mean attention entropy (B, N).
    Returns:
      out (B, N, C), kv[, entropy]: kv is (k, v) of the N new tokens, or with
      kv_buffer the updated segment caches (k, v) each (L_seg, B, M, H, D).
    """
    q, k, v = self.qkv(x, rope)
    kv_len = None
    if kv_buffer is not None:
      if kv_prefix is not None:
        raise ValueError("pass kv_prefix or kv_buffer, not both")
      kv_buffer = kv_buffer.write(k, v)
      k_all, v_all = (t.astype(k.dtype) for t in kv_buffer.row())
      kv_len = kv_buffer.offset + x.shape[1]
      kv = (kv_buffer.k, kv_buffer.v)
    elif kv_prefix is not None:
      k_all = jnp.concatenate([kv_prefix[0].astype(k.dtype), k], axis=1)
      v_all = jnp.concatenate([kv_prefix[1].astype(v.dtype), v], axis=1)
      kv = (k, v)
    else:
      k_all, v_all = k, v
      kv = (k, v)
    res = attention_ops.attention(q, k_all, v_all, scale=1.0, mask=mask,
                                  implementation=impl, kv_len=kv_len,
                                  return_entropy=return_entropy)
    o, ent = (res if return_entropy else (res, None))
    b, n = x.shape[:2]
    out = self.proj(o.reshape(b, n, -1).astype(self.dtype))
    if return_entropy:
      return out, kv, ent
    return out, kv


class CrossAttention(nn.Module):
  """Cross-attention from image tokens to (padded, masked) text tokens."""
  cfg: config_lib.TransformerConfig
  dtype: Any = jnp.float32

  def setup(self):
    c = self.cfg.width
    self.mat_q = nn.Dense(c, dtype=self.dtype, name="mat_q")
    self.mat_kv = axes.HeadsDense(2, self.cfg.num_heads, self.cfg.head_dim,
                                  self.dtype, name="mat_kv")
    self.v_bias = self.param("v_bias", nn.initializers.zeros, (c,))
    self.proj = nn.Dense(c, dtype=self.dtype, name="proj")

  def text_kv(self, text: Array) -> KV:
    """(B, T, C) projected text -> k, v each (B, T, H, D).

    Computed once per generation; the official code recomputes it at every
    scale (ARCHITECTURES B.3), which gives the same numbers.
    """
    h, d = self.cfg.num_heads, self.cfg.head_dim
    kv = self.mat_kv(text)  # (B, T, 2, H, D)
    heads = (axes.BATCH, None, axes.HEADS, None)
    return (axes.constrain(kv[:, :, 0], heads),
            axes.constrain(kv[:, :, 1] + self.v_bias.astype(
                self.dtype).reshape(h, d), heads))

  def __call__(self, x: Array, text_kv: KV, text_mask: Optional[Array] = None,
               impl: str = "xla",
               text_lengths: Optional[Array] = None) -> Array:
    """x (B, N, C) attends to the text keys.

    The valid text tokens are given by text_mask (B, T) bool, or by
    text_lengths (B,) int (the first text_lengths[b] tokens: the official
    varlen form, which cuDNN takes without building a mask).
    """
    b, n, _ = x.shape
    h, d = self.cfg.num_heads, self.cfg.head_dim
    q = self.mat_q(x).reshape(b, n, h, d)
    k, v = text_kv
    o = attention_ops.attention(q, k.astype(q.dtype), v.astype(q.dtype),
                                scale=1.0 / math.sqrt(d), key_mask=text_mask,
                                key_lengths=text_lengths,
                                implementation=impl)
    return self.proj(o.reshape(b, n, -1))


class FFN(nn.Module):
  cfg: config_lib.TransformerConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = nn.Dense(self.cfg.mlp_hidden, dtype=self.dtype, name="fc1")(x)
    h = axes.constrain(h, (axes.BATCH,) + (None,) * (h.ndim - 2)
                       + (axes.MLP,))
    return nn.Dense(self.cfg.width, dtype=self.dtype, name="fc2")(gelu_tanh(h))


class Block(nn.Module):
  """One transformer block (VAR `AdaLNSelfAttn` / Infinity `CrossAttnBlock`).

  VAR:      x += γ1·SA(LN(x)(1+s1)+b1);                  x += γ2·FFN(LN(x)(1+s2)+b2)
  Infinity: x += γ1·SA(...); x += CA(ca_norm(x), text); x += γ2·FFN(...)

  `ada_in` is the class/text condition (B, C) for per-block AdaLN, or the
  shared AdaLN output (B, 6, C) to which this block adds its `ada_gss`.
  """
  cfg: config_lib.TransformerConfig
  dtype: Any = jnp.float32

  def setup(self):
    cfg = self.cfg
    self.sa = SelfAttention(cfg, self.dtype, name="sa")
    self.ffn = FFN(cfg, self.dtype, name="ffn")
    if cfg.style == "infinity":
      self.ca = CrossAttention(cfg, self.dtype, name="ca")
      self.ca_norm = nn.LayerNorm(epsilon=cfg.norm_eps, dtype=jnp.float32,
                                  use_fast_variance=False, name="ca_norm")
    if cfg.shared_aln:
      self.ada_gss = self.param(
          "ada_gss", nn.initializers.normal(1.0 / math.sqrt(cfg.width)),
          (6, cfg.width))
    else:
      self.ada_lin = nn.Dense(6 * cfg.width, name="ada_lin")

  def modulation(self, ada_in: Array) -> Tuple[Array, ...]:
    """Six (B, 1, C) fp32 chunks γ1, γ2, s1, s2, b1, b2."""
    if self.cfg.shared_aln:
      m = ada_in.astype(jnp.float32) + self.ada_gss
    else:
      m = self.ada_lin(jax.nn.silu(ada_in.astype(jnp.float32)))
      m = m.reshape(ada_in.shape[0], 6, self.cfg.width)
    return tuple(m[:, i, None, :] for i in range(6))

  def text_kv(self, text: Array) -> KV:
    return self.ca.text_kv(text)

  def __call__(self, x: Array, ada_in: Array, *, rope=None,
               kv_prefix: Optional[KV] = None,
               kv_buffer: Optional[KVBuffer] = None,
               mask: Optional[Array] = None,
               text_kv: Optional[KV] = None, text_mask: Optional[Array] = None,
               text_lengths: Optional[Array] = None,
               impl: str = "xla", return_entropy: bool = False,
               return_branches: bool = False, sa_impl: Optional[str] = None):
    """Dense block on all N tokens.

    Args:
      x: (B, N, C) fp32 residual stream.
      ada_in: (B, C) or (B, 6, C), see class docstring.
      rope, kv_prefix, kv_buffer, mask, impl, return_entropy: see
        SelfAttention.
      text_kv: per-block text (k, v) (Infinity), from `text_kv`.
      text_mask: (B, T) bool, True = real text token; or instead
      text_lengths: (B,) int, the first text_lengths[b] tokens are real.
      sa_impl: self-attention implementation if not `impl` (e.g. the FAE
        kernel in a probe layer while cross-attention stays on cuDNN).
      return_branches: also return the branch outputs (γ1·SA, [CA,] γ2·FFN),
        each (B, N, C), for FastVAR-style cached restoration.
    Returns:
      x (B, N, C) fp32, (k, v) of the N tokens (with kv_buffer: the updated
      segment caches)[, entropy (B, N)][, branches].
    """
    eps = self.cfg.norm_eps
    g1, g2, s1, s2, b1, b2 = self.modulation(ada_in)
    h = layer_norm(x, eps) * (1.0 + s1) + b1
    res = self.sa(h.astype(self.dtype), rope=rope, kv_prefix=kv_prefix,
                  kv_buffer=kv_buffer, mask=mask, impl=sa_impl or impl,
                  return_entropy=return_entropy)
    a, kv = res[0], res[1]
    branches = [a.astype(jnp.float32) * g1]
    x = x + branches[-1]
    if self.cfg.style == "infinity":
      branches.append(self.ca(self.ca_norm(x).astype(self.dtype), text_kv,
                              text_mask, impl=impl,
                              text_lengths=text_lengths).astype(jnp.float32))
      x = x + branches[-1]
    h = layer_norm(x, eps) * (1.0 + s2) + b2
    branches.append(self.ffn(h.astype(self.dtype)).astype(jnp.float32) * g2)
    x = x + branches[-1]
    out = (x, kv)
    if return_entropy:
      out += (res[2],)
    if return_branches:
      out += (tuple(branches),)
    return out

  def sparse(self, x: Array, ada_in: Array, *, idx: Optional[Array],
             select_fn=None, rope=None, kv_prefix: Optional[KV] = None,
             kv_buffer: Optional[KVBuffer] = None,
             text_kv: Optional[KV] = None, text_mask: Optional[Array] = None,
             text_lengths: Optional[Array] = None,
             cached: Optional[Tuple[Array, ...]] = None, impl: str = "xla"):
    """The block on K kept tokens of the full stream x (an "S" layer).

    Every sub-layer (SA, CA, FFN) gathers its kept tokens from the current
    full stream, runs on them only and writes its output back:
      passthrough (cached=None): pruned tokens are left unchanged;
      cached: pruned tokens receive the cached branch output (FastVAR's cached
        token restoration), kept tokens their fresh output.
    With `idx` given the kept set is the same for all sub-layers (select
    "scale"); with idx=None `select_fn(x) -> (B, K)` re-chooses it before every
    sub-layer (select "sublayer").

    Args:
      x: (B, N, C) fp32 full residual stream.
      ada_in: see __call__.
      idx: (B, K) sorted kept indices, or None.
      select_fn: (B, N, C) -> (B, K) when idx is None.
      rope: full-scale (cos, sin) (N, D/2) or None.
      kv_prefix: cache of earlier scales (B, P, H, D) x 2, or None.
      kv_buffer: instead of kv_prefix, the segment cache (see SelfAttention):
        the K kept tokens' keys are written at its offset P first, then they
        attend over the row's first P + K keys.
      text_kv, text_mask / text_lengths: cross-attention context (Infinity).
      cached: per-branch outputs (B, N, C) resized to this scale, or None.
      impl: attention implementation.
    Returns:
      x (B, N, C), (k, v) of the K tokens the self-attention ran on (with
      kv_buffer: the updated segment caches).
    """
    eps = self.cfg.norm_eps
    g1, g2, s1, s2, b1, b2 = self.modulation(ada_in)
    pick = (lambda x: idx) if idx is not None else select_fn

    def restore(x, i, out, n):
      if cached is None:
        return scatter_tokens(x, i, out, add=True)
      full = scatter_tokens(cached[n].astype(jnp.float32), i, out, add=False)
      return x + full

    i = pick(x)
    h = layer_norm(gather_tokens(x, i), eps) * (1.0 + s1) + b1
    a, kv = self.sa(h.astype(self.dtype), rope=gather_rope(rope, i),
                    kv_prefix=kv_prefix, kv_buffer=kv_buffer, impl=impl)
    x = restore(x, i, a.astype(jnp.float32) * g1, 0)
    n = 1
    if self.cfg.style == "infinity":
      i = pick(x)
      c = self.ca(self.ca_norm(gather_tokens(x, i)).astype(self.dtype),
                  text_kv, text_mask, impl=impl, text_lengths=text_lengths)
      x = restore(x, i, c.astype(jnp.float32), n)
      n += 1
    i = pick(x)
    h = layer_norm(gather_tokens(x, i), eps) * (1.0 + s2) + b2
    f = self.ffn(h.astype(self.dtype)).astype(jnp.float32) * g2
    x = restore(x, i, f, n)
    return x, kv
