"""VAR's multi-scale VQVAE (ARCHITECTURES A.5) as pure linen modules, NHWC.

The encoder/decoder are the LDM vq-f16 convolutional stacks; the quantiser is
VAR's residual multi-scale VQ with the shared phi convs. Everything here works
channels-last; the converter (`convert/vqvae.py`) transposes PyTorch weights.

Dimension letters:
  B batch, H/W image height/width, h/w latent grid (H/16 at ch_mult of 5
  levels), C channels of a conv stack, Cvae latent channels (z_channels),
  V codebook size, S scales, si scale index, p side of scale si
  (`patch_nums[si]`), P the last (full-grid) side.

Images are RGB in [-1, 1]. Parameters are float32; `dtype` is the compute
dtype of the conv stacks. Normalisation statistics, attention softmax and the
whole quantiser (distances, f_hat accumulation) always run in float32, as the
official code does (its quantiser works on `f.float()` and a float32 f_hat).

Typical use (jit at the call site, STYLE.md §9.14):
  model = VQVAE(config)
  idx = model.apply(params, img, method=VQVAE.img_to_indices)
  img = model.apply(params, model.apply(params, idx,
                    method=VQVAE.indices_to_f_hat), method=VQVAE.decode)
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from toprovar_jax.models.config import VQVAEConfig
from toprovar_jax.ops import resample

Array = jax.Array
Dtype = Any
Precision = Optional[jax.lax.Precision]

_GN_GROUPS = 32  # the official `Normalize` hard-codes 32 groups
_GN_EPS = 1e-6


class GroupNorm(nn.Module):
  """GroupNorm(32, eps 1e-6) with float32, two-pass statistics.

  The variance is mean((x - mean)^2), never E[x^2] - E[x]^2: at 256 px a group
  holds up to 65,536 values and the one-pass form loses digits (reference
  README §5.3).

  Attributes:
    dtype: output dtype.
  """
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: (B, H, W, C) with C divisible by 32 -> same shape."""
    c = x.shape[-1]
    if c % _GN_GROUPS:
      raise ValueError(f"GroupNorm: {c} channels are not divisible by 32")
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    xg = x.astype(jnp.float32).reshape(
        *x.shape[:-1], _GN_GROUPS, c // _GN_GROUPS)
    axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)  # spatial + in-group
    mean = jnp.mean(xg, axis=axes, keepdims=True)
    centred = xg - mean
    var = jnp.mean(jnp.square(centred), axis=axes, keepdims=True)
    y = (centred * jax.lax.rsqrt(var + _GN_EPS)).reshape(x.shape)
    return (y * scale + bias).astype(self.dtype)


def _conv(features: int, kernel: int, *, dtype: Dtype,
          precision: Precision, stride: int = 1, padding=None,
          name: Optional[str] = None) -> nn.Conv:
  """Conv with PyTorch's symmetric `padding=kernel // 2` unless given.

  `name` is None inside `setup`, where linen names a submodule after the
  attribute it is assigned to.
  """
  if padding is None:
    padding = ((kernel // 2, kernel // 2),) * 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=padding, dtype=dtype, param_dtype=jnp.float32,
                 precision=precision, name=name)


class ResnetBlock(nn.Module):
  """GN -> SiLU -> conv3x3, twice, plus a 1x1 `nin_shortcut` if C changes."""
  out_channels: int
  dtype: Dtype = jnp.float32
  precision: Precision = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: (B, H, W, Cin) -> (B, H, W, out_channels)."""
    kw = dict(dtype=self.dtype, precision=self.precision)
    h = nn.silu(GroupNorm(dtype=self.dtype, name="norm1")(x))
    h = _conv(self.out_channels, 3, name="conv1", **kw)(h)
    h = nn.silu(GroupNorm(dtype=self.dtype, name="norm2")(h))
    h = _conv(self.out_channels, 3, name="conv2", **kw)(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, name="nin_shortcut", **kw)(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all h*w positions, with residual.

  The fused 1x1 `qkv` conv emits [q | k | v] along channels, as the official
  (3C, C, 1, 1) weight does; scores are scaled by C^-1/2.
  """
  dtype: Dtype = jnp.float32
  precision: Precision = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: (B, h, w, C) -> same shape."""
    b, hh, ww, c = x.shape
    kw = dict(dtype=self.dtype, precision=self.precision)
    qkv = _conv(3 * c, 1, name="qkv", **kw)(
        GroupNorm(dtype=self.dtype, name="norm")(x))
    q, k, v = jnp.split(qkv.reshape(b, hh * ww, 3 * c), 3, axis=-1)
    # Softmax in float32 whatever the compute dtype: the logits of a 256-
    # position map are too wide for a bf16 exp.
    w = jnp.einsum("bic,bjc->bij", q, k, precision=self.precision,
                   preferred_element_type=jnp.float32) * (c ** -0.5)
    w = jax.nn.softmax(w, axis=-1).astype(v.dtype)
    h = jnp.einsum("bij,bjc->bic", w, v, precision=self.precision)
    h = _conv(c, 1, name="proj_out", **kw)(h.reshape(b, hh, ww, c))
    return x + h


class Downsample(nn.Module):
  """2x down: zero pad right/bottom by one, then a VALID stride-2 conv3x3.

  The asymmetric pad is the official `F.pad(x, (0, 1, 0, 1))`; putting it in
  the conv's padding gives the same result without materialising it.
  """
  dtype: Dtype = jnp.float32
  precision: Precision = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: (B, H, W, C) -> (B, H/2, W/2, C)."""
    return _conv(x.shape[-1], 3, stride=2, padding=((0, 1), (0, 1)),
                 name="conv", dtype=self.dtype, precision=self.precision)(x)


class Upsample(nn.Module):
  """2x up: nearest-neighbour repeat, then conv3x3."""
  dtype: Dtype = jnp.float32
  precision: Precision = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: (B, H, W, C) -> (B, 2H, 2W, C)."""
    return _conv(x.shape[-1], 3, name="conv", dtype=self.dtype,
                 precision=self.precision)(resample.nearest_upsample2x(x))


class _Mid(nn.Module):
  """ResBlock -> AttnBlock -> ResBlock at the lowest resolution."""
  dtype: Dtype = jnp.float32
  precision: Precision = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.dtype, precision=self.precision)
    c = x.shape[-1]
    x = ResnetBlock(c, name="block_1", **kw)(x)
    x = AttnBlock(name="attn_1", **kw)(x)
    return ResnetBlock(c, name="block_2", **kw)(x)


class _Level(nn.Module):
  """One resolution level: ResBlocks (each followed by attention if `attn`),
  then an optional resampler. Module names mirror `down.{i}` / `up.{i}`."""
  out_channels: int
  num_blocks: int
  attn: bool
  resample: Optional[str]  # "down", "up" or None
  dtype: Dtype = jnp.float32
  precision: Precision = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.dtype, precision=self.precision)
    for j in range(self.num_blocks):
      x = ResnetBlock(self.out_channels, name=f"block_{j}", **kw)(x)
      if self.attn:
        x = AttnBlock(name=f"attn_{j}", **kw)(x)
    if self.resample == "down":
      x = Downsample(name="downsample", **kw)(x)
    elif self.resample == "up":
      x = Upsample(name="upsample", **kw)(x)
    return x


class Encoder(nn.Module):
  """Image -> latent before `quant_conv`.

  conv_in, then per level i: `num_res_blocks` ResBlocks to ch*ch_mult[i]
  (attention after each in the last level) and a 2x downsample except after
  the last level; mid; GN -> SiLU -> conv_out to z_channels.
  """
  config: VQVAEConfig
  dtype: Dtype = jnp.float32
  precision: Precision = None

  @nn.compact
  def __call__(self, img: Array) -> Array:
    """img: (B, H, W, in_channels) -> (B, H/2^(L-1), W/2^(L-1), Cvae)."""
    cfg = self.config
    kw = dict(dtype=self.dtype, precision=self.precision)
    n = len(cfg.ch_mult)
    h = _conv(cfg.ch, 3, name="conv_in", **kw)(img.astype(self.dtype))
    for i, mult in enumerate(cfg.ch_mult):
      last = i == n - 1
      h = _Level(cfg.ch * mult, cfg.num_res_blocks, attn=last,
                 resample=None if last else "down", name=f"down_{i}", **kw)(h)
    h = _Mid(name="mid", **kw)(h)
    h = nn.silu(GroupNorm(dtype=self.dtype, name="norm_out")(h))
    return _conv(cfg.z_channels, 3, name="conv_out", **kw)(h)


class Decoder(nn.Module):
  """Latent after `post_quant_conv` -> image (unclamped).

  conv_in to ch*ch_mult[-1]; mid; levels in reverse order (i = L-1 .. 0), each
  `num_res_blocks + 1` ResBlocks to ch*ch_mult[i] (attention after each in the
  top level i = L-1) and a nearest-2x + conv upsample except at level 0;
  GN -> SiLU -> conv_out. Level i is named `up_{i}` like the official `up.{i}`.
  """
  config: VQVAEConfig
  dtype: Dtype = jnp.float32
  precision: Precision = None

  @nn.compact
  def __call__(self, z: Array) -> Array:
    """z: (B, h, w, Cvae) -> (B, h*2^(L-1), w*2^(L-1), in_channels)."""
    cfg = self.config
    kw = dict(dtype=self.dtype, precision=self.precision)
    n = len(cfg.ch_mult)
    h = _conv(cfg.ch * cfg.ch_mult[-1], 3, name="conv_in", **kw)(
        z.astype(self.dtype))
    h = _Mid(name="mid", **kw)(h)
    for i in reversed(range(n)):
      h = _Level(cfg.ch * cfg.ch_mult[i], cfg.num_res_blocks + 1,
                 attn=i == n - 1, resample="up" if i else None,
                 name=f"up_{i}", **kw)(h)
    h = nn.silu(GroupNorm(dtype=self.dtype, name="norm_out")(h))
    return _conv(cfg.in_channels, 3, name="conv_out", **kw)(h)


def num_phi(config: VQVAEConfig) -> int:
  """Number of phi convs stored (0 when quant_resi is ~0: phi is identity)."""
  if abs(config.quant_resi) <= 1e-6:
    return 0
  return config.share_quant_resi


class MultiScaleQuantizer(nn.Module):
  """Codebook (V, Cvae) and the shared phi convs of `VectorQuantizer2`.

  Phi_j(h) = (1 - r) h + r conv3x3_j(h), r = |quant_resi|; scale si uses
  phi `config.phi_index[si]`. All math is float32.
  """
  config: VQVAEConfig
  precision: Precision = None

  def setup(self):
    cfg = self.config
    if cfg.share_quant_resi < 1:
      # share_quant_resi=0 (one phi per scale) uses a different tick rule
      # than `VQVAEConfig.phi_index` implements; no VAR checkpoint uses it.
      raise NotImplementedError(
          "VQVAEConfig.share_quant_resi must be >= 1 (partially or fully "
          f"shared phi); got {cfg.share_quant_resi}")
    self.embedding = self.param(
        "embedding", nn.initializers.normal(1.0),
        (cfg.vocab_size, cfg.z_channels), jnp.float32)
    # A list attribute: linen names its entries phi_0, phi_1, ...
    self.phi = [
        _conv(cfg.z_channels, 3, dtype=jnp.float32, precision=self.precision)
        for _ in range(num_phi(cfg))]

  def apply_phi(self, h: Array, si: int) -> Array:
    """h: (B, P, P, Cvae) -> same; the phi of scale si."""
    if not self.phi:
      return h
    r = abs(self.config.quant_resi)
    return h * (1 - r) + self.phi[self.config.phi_index[si]](h) * r

  def touch_all(self, h: Array) -> Array:
    """Runs every phi once so that `init` creates all of them."""
    for conv in self.phi:
      h = conv(h)
    return h

  def lookup(self, idx: Array) -> Array:
    """idx: (B, p, p) int -> codes (B, p, p, Cvae) float32."""
    return jnp.take(self.embedding, idx, axis=0)

  def nearest(self, z: Array) -> Array:
    """z: (B, p, p, Cvae) -> (B, p, p) int32 index of the nearest code.

    Squared Euclidean distance as the official code forms it,
    (||z||^2 + ||e||^2) - 2 z.e, in float32. The smallest top-2 gap on the
    golden image is 1.6e-4, far above float32 noise at these magnitudes, but
    the same operand order keeps genuine near-ties resolved the same way.
    """
    z = z.astype(jnp.float32)
    e = self.embedding
    ze = jnp.einsum("...c,vc->...v", z, e, precision=jax.lax.Precision.HIGHEST)
    d = (jnp.sum(jnp.square(z), axis=-1, keepdims=True)
         + jnp.sum(jnp.square(e), axis=-1)) - 2.0 * ze
    return jnp.argmin(d, axis=-1).astype(jnp.int32)

  def upsample(self, h: Array, si: int) -> Array:
    """Bicubic-up a scale's codes to the full grid; identity at the last."""
    p_full = self.config.patch_nums[-1]
    if si == len(self.config.patch_nums) - 1:
      return h
    return resample.bicubic_resize(h, (p_full, p_full))


class VQVAE(nn.Module):
  """VAR's VQVAE: encoder, quant_conv, multi-scale quantiser, post_quant_conv,
  decoder. Methods are meant for `model.apply(params, ..., method=...)`.

  Attributes:
    config: the VQVAEConfig (architecture and scale schedule).
    dtype: compute dtype of the encoder/decoder stacks.
    precision: matmul/conv precision (None follows
      `jax_default_matmul_precision`).
  """
  config: VQVAEConfig
  dtype: Dtype = jnp.float32
  precision: Precision = None

  def setup(self):
    kw = dict(dtype=self.dtype, precision=self.precision)
    z = self.config.z_channels
    self.encoder = Encoder(self.config, **kw)
    self.decoder = Decoder(self.config, **kw)
    self.quant_conv = _conv(z, 3, **kw)
    self.post_quant_conv = _conv(z, 3, **kw)
    self.quantize = MultiScaleQuantizer(self.config, precision=self.precision)

  @property
  def _full(self) -> int:
    return self.config.patch_nums[-1]

  def __call__(self, img: Array) -> Array:
    """Reconstruction through the full token path (also the init entry).

    img: (B, H, W, 3) -> (B, H, W, 3) in [-1, 1].
    """
    f = self.encode(img)
    if self.is_initializing():
      self.quantize.touch_all(f)
    _, f_hats = self.f_to_indices(f, return_f_hat=True)
    return self.decode(f_hats[-1])

  def encode(self, img: Array) -> Array:
    """img: (B, H, W, 3) in [-1, 1] -> f (B, h, w, Cvae) float32."""
    f = self.quant_conv(self.encoder(img))
    return f.astype(jnp.float32)

  def f_to_indices(self, f: Array, *, return_f_hat: bool = False):
    """Residual multi-scale quantisation of f (official `f_to_idxBl_or_fhat`).

    At every scale: area-down the residual to p x p (not at the last scale),
    pick the nearest codes, then f_hat += phi(bicubic-up(codes)) and
    residual -= the same term.

    Args:
      f: (B, P, P, Cvae) with P = patch_nums[-1].
      return_f_hat: also return the running f_hat after each scale.

    Returns:
      indices: tuple over scales of (B, p, p) int32; and with
      `return_f_hat`, a tuple over scales of (B, P, P, Cvae) float32.
    """
    cfg = self.config
    chex.assert_shape(f, (None, self._full, self._full, cfg.z_channels))
    rest = f.astype(jnp.float32)
    f_hat = jnp.zeros_like(rest)
    last = len(cfg.patch_nums) - 1
    indices, f_hats = [], []
    for si, p in enumerate(cfg.patch_nums):
      z = rest if si == last else resample.area_resize(rest, (p, p))
      idx = self.quantize.nearest(z)
      h = self.quantize.apply_phi(
          self.quantize.upsample(self.quantize.lookup(idx), si), si)
      f_hat = f_hat + h
      rest = rest - h
      indices.append(idx)
      f_hats.append(f_hat)
    if return_f_hat:
      return tuple(indices), tuple(f_hats)
    return tuple(indices)

  def img_to_indices(self, img: Array) -> Tuple[Array, ...]:
    """img: (B, H, W, 3) -> tuple over scales of (B, p, p) int32."""
    return self.f_to_indices(self.encode(img))

  def add_scale(self, f_hat: Array, idx: Array, si: int) -> Array:
    """One f_hat accumulation step from chosen indices (the sampler's step).

    Args:
      f_hat: (B, P, P, Cvae) running sum after scales < si.
      idx: (B, p, p) int indices of scale si (p = patch_nums[si]).
      si: static scale index.

    Returns:
      (B, P, P, Cvae) float32: f_hat + phi_si(bicubic-up(codebook[idx])).
    """
    p = self.config.patch_nums[si]
    chex.assert_shape(idx, (f_hat.shape[0], p, p))
    h = self.quantize.upsample(self.quantize.lookup(idx), si)
    return f_hat.astype(jnp.float32) + self.quantize.apply_phi(h, si)

  def next_input(self, f_hat: Array, si: int) -> Array:
    """Input features for scale si + 1: area-down of f_hat.

    f_hat: (B, P, P, Cvae) after scales <= si -> (B, p', p', Cvae) with
    p' = patch_nums[si + 1]. Flattened row-major this is the official
    teacher-forcing / sampling input of that scale.
    """
    p = self.config.patch_nums[si + 1]
    return resample.area_resize(f_hat.astype(jnp.float32), (p, p))

  def indices_to_f_hat(self, indices: Sequence[Array]) -> Array:
    """indices: per scale (B, p, p) -> final f_hat (B, P, P, Cvae) float32."""
    if len(indices) != len(self.config.patch_nums):
      raise ValueError(f"indices_to_f_hat: got {len(indices)} scales, "
                       f"expected {len(self.config.patch_nums)}")
    b = indices[0].shape[0]
    f_hat = jnp.zeros((b, self._full, self._full, self.config.z_channels),
                      jnp.float32)
    for si, idx in enumerate(indices):
      f_hat = self.add_scale(f_hat, idx, si)
    return f_hat

  def decode(self, f_hat: Array) -> Array:
    """f_hat: (B, h, w, Cvae) -> image (B, H, W, 3) float32 in [-1, 1]."""
    img = self.decoder(self.post_quant_conv(f_hat.astype(self.dtype)))
    return jnp.clip(img.astype(jnp.float32), -1.0, 1.0)

  def indices_to_img(self, indices: Sequence[Array]) -> Array:
    """Per-scale indices -> image (B, H, W, 3) in [-1, 1]."""
    return self.decode(self.indices_to_f_hat(indices))
