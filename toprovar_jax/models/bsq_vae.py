"""Infinity's BSQ VAE (binary spherical quantisation) in linen, NHWC.

A Flux/LDM-style convolutional autoencoder with no attention and no
quant / post-quant convs, plus the multi-scale residual BSQ quantiser of the
official `MultiScaleBSQ(new_quant=True, schedule_mode='dynamic')`
(ARCHITECTURES.md B.4). Images are NHWC in [-1, 1]; latents are NHWC.

Dimension letters:
  B batch, H x W full latent grid (image size / stride), h x w the grid of one
  scale, d codebook dim (bits per token), S scales, C conv channels.

Parity notes against the PyTorch code:
  * GroupNorm(32, eps 1e-6) computes its variance in two passes in fp32; the
    one-pass E[x^2] - E[x]^2 form loses ~1e-4 on 256^2 groups of one channel
    (reference README 5.3).
  * Downsampling pads right/bottom by one and runs a VALID stride-2 conv, as
    torch has no asymmetric conv padding.
  * 'trilinear' on a (B, d, 1, H, W) latent is bilinear on (H, W) with
    align_corners=False and no antialias, even when it shrinks; 'area' is
    adaptive average pooling. Both come from `toprovar_jax.ops.resample`.

Border padding (`BSQConfig.padding`): 'zeros' is the official VAE. 'edge'
(our emoji model v2) pads every conv with copies of the edge pixels instead,
so a spatially constant input stays exactly constant through every layer
(convs, GroupNorm, swish, nearest upsampling): the networks cannot paint a
fixed pattern onto a flat background near the border, as v1's zero-padded
decoder learned to (a multicoloured speck ~8-20 px from the top-left corner
of every image; BENCHMARKS.md, "The top-left speck of model v1").

The schedule is a static tuple of (h, w) VAE-grid sizes, coarse to fine, whose
last entry is normally the full grid (H, W).
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from toprovar_jax.models import config as config_lib
from toprovar_jax.ops import resample

Array = jax.Array
HW = Tuple[int, int]

_GN_GROUPS = 32
_GN_EPS = 1e-6
# torch.nn.functional.normalize's default eps.
_L2_EPS = 1e-12


# --------------------------------------------------------------------------
# Building blocks.
# --------------------------------------------------------------------------


def _group_norm(name: str) -> nn.GroupNorm:
  # Two-pass variance: see the module docstring (reference README 5.3).
  return nn.GroupNorm(num_groups=_GN_GROUPS, epsilon=_GN_EPS,
                      use_fast_variance=False, name=name)


def _pad_hw(x: Array, before: int, after: int, mode: str) -> Array:
  """Pads H and W of (B, H, W, C): zeros, or copies of the edge pixels."""
  widths = ((0, 0), (before, after), (before, after), (0, 0))
  return jnp.pad(x, widths, mode='edge' if mode == 'edge' else 'constant')


def _conv3x3(features: int, name: str, padding: str = 'zeros'):
  """A 3x3 'same' conv: (B, H, W, C) -> (B, H, W, features).

  `padding` 'zeros' is the official conv; 'edge' pads with the edge pixels
  and runs a VALID conv (same parameters), so the conv has no way to tell
  where the image border is from a flat input (see `BSQConfig.padding`).
  """
  if padding == 'zeros':
    return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), name=name)
  conv = nn.Conv(features, (3, 3), padding='VALID', name=name)
  return lambda x: conv(_pad_hw(x, 1, 1, padding))


class ResnetBlock(nn.Module):
  """GN -> swish -> conv3x3, twice, plus a (1x1-projected) skip.

  Attributes:
    features: output channels; a 1x1 `nin_shortcut` exists iff they differ
      from the input channels.
    padding: 'zeros' or 'edge' (`BSQConfig.padding`).
  """
  features: int
  padding: str = 'zeros'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """(B, H, W, C_in) -> (B, H, W, features)."""
    h = nn.swish(_group_norm('norm1')(x))
    h = _conv3x3(self.features, 'conv1', self.padding)(h)
    h = nn.swish(_group_norm('norm2')(h))
    h = _conv3x3(self.features, 'conv2', self.padding)(h)
    if x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), name='nin_shortcut')(x)
    return x + h


class Downsample(nn.Module):
  """Halves H and W: pad right/bottom by one, VALID stride-2 conv3x3."""
  padding: str = 'zeros'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """(B, H, W, C) -> (B, H/2, W/2, C) for even H, W."""
    # torch pads (0, 1, 0, 1): nothing on the top/left, one on bottom/right.
    x = _pad_hw(x, 0, 1, self.padding)
    return nn.Conv(x.shape[-1], (3, 3), strides=(2, 2), padding='VALID',
                   name='conv')(x)


class Upsample(nn.Module):
  """Doubles H and W: nearest-neighbour x2, then conv3x3."""
  padding: str = 'zeros'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """(B, H, W, C) -> (B, 2H, 2W, C)."""
    return _conv3x3(x.shape[-1], 'conv', self.padding)(
        resample.nearest_upsample2x(x))


class _Level(nn.Module):
  """One resolution level: `num_blocks` ResnetBlocks, optional resample."""
  features: int
  num_blocks: int
  down: bool = False
  up: bool = False
  padding: str = 'zeros'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for b in range(self.num_blocks):
      x = ResnetBlock(self.features, self.padding, name=f'block_{b}')(x)
    if self.down:
      x = Downsample(self.padding, name='downsample')(x)
    if self.up:
      x = Upsample(self.padding, name='upsample')(x)
    return x


def _num_resamples(cfg: config_lib.BSQConfig) -> int:
  """log2(stride): how many levels change resolution."""
  n = int(round(math.log2(cfg.stride)))
  if 2 ** n != cfg.stride or n > len(cfg.ch_mult):
    raise ValueError(f'BSQConfig.stride: {cfg.stride} is not a power of two '
                     f'<= 2**{len(cfg.ch_mult)}')
  return n


class Encoder(nn.Module):
  """Image (B, H*s, W*s, 3) -> raw latent h (B, H, W, d); s = cfg.stride."""
  cfg: config_lib.BSQConfig

  @nn.compact
  def __call__(self, img: Array) -> Array:
    cfg = self.cfg
    n_down = _num_resamples(cfg)
    pad = cfg.padding
    x = _conv3x3(cfg.base_ch, 'conv_in', pad)(img)
    for lvl, mult in enumerate(cfg.ch_mult):
      # Official: downsample at every level i < log2(patch_size).
      x = _Level(cfg.base_ch * mult, cfg.num_res_blocks, down=lvl < n_down,
                 padding=pad, name=f'down_{lvl}')(x)
    width = x.shape[-1]
    x = ResnetBlock(width, pad, name='mid_block_1')(x)
    x = ResnetBlock(width, pad, name='mid_block_2')(x)
    x = nn.swish(_group_norm('norm_out')(x))
    return _conv3x3(cfg.codebook_dim, 'conv_out', pad)(x)


class Decoder(nn.Module):
  """Summed codes (B, H, W, d) -> image (B, H*s, W*s, 3), not clamped."""
  cfg: config_lib.BSQConfig

  @nn.compact
  def __call__(self, z: Array) -> Array:
    cfg = self.cfg
    n_up = _num_resamples(cfg)
    pad = cfg.padding
    width = cfg.base_ch * cfg.ch_mult[-1]
    x = _conv3x3(width, 'conv_in', pad)(z)
    x = ResnetBlock(width, pad, name='mid_block_1')(x)
    x = ResnetBlock(width, pad, name='mid_block_2')(x)
    # Levels run coarse to fine; the official `up.{lvl}` index is kept in the
    # name, and levels 1..log2(stride) upsample after their blocks (Flux's
    # offset-by-one relative to the encoder).
    for lvl in reversed(range(len(cfg.ch_mult))):
      x = _Level(cfg.base_ch * cfg.ch_mult[lvl], cfg.num_res_blocks + 1,
                 up=1 <= lvl <= n_up, padding=pad, name=f'up_{lvl}')(x)
    x = nn.swish(_group_norm('norm_out')(x))
    return _conv3x3(3, 'conv_out', pad)(x)


# --------------------------------------------------------------------------
# Quantisation (pure functions, no parameters).
# --------------------------------------------------------------------------


def _l2_normalize(x: Array) -> Array:
  # F.normalize: x / max(||x||, eps), a division (not x * rsqrt).
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, _L2_EPS)


def quantize(z: Array) -> Tuple[Array, Array]:
  """Binary spherical quantisation of every token vector.

  Args:
    z: (..., d) float32 residual.

  Returns:
    codes: (..., d) float32, +-1/sqrt(d) per channel.
    bits: (..., d) uint8, 1 where the code is positive.
  """
  d = z.shape[-1]
  u = _l2_normalize(z.astype(jnp.float32))
  zhat = jnp.where(u > 0, 1.0, -1.0).astype(jnp.float32) * jnp.float32(
      1.0 / d ** 0.5)
  # The official straight-through form u + (zhat - u) is what torch returns
  # in the forward pass; it equals zhat to within one ulp.
  codes = u + (zhat - u)
  return codes, (codes > 0).astype(jnp.uint8)


def bits_to_codes(bits: Array, d: int | None = None) -> Array:
  """Bit labels (..., d) in {0, 1} -> codes (2*bit - 1)/sqrt(d), float32.

  The official path also l2-normalises, which is a no-op on such vectors.
  """
  d = bits.shape[-1] if d is None else d
  if bits.shape[-1] != d:
    raise ValueError(f'bits_to_codes: last axis {bits.shape[-1]} != d={d}')
  scale = jnp.float32(1.0 / d ** 0.5)
  return (2.0 * bits.astype(jnp.float32) - 1.0) * scale


def add_scale_codes(summed: Array, codes: Array, si: int,
                    schedule: Sequence[HW],
                    final_hw: HW | None = None) -> Array:
  """Adds the codes of scale `si` to the running sum (sampler step 3.6).

  Args:
    summed: (B, H, W, d) running sum of all previous scales (zeros at si=0).
    codes: (B, h_si, w_si, d) codes of scale `si`.
    si: static scale index into `schedule`.
    schedule: static (h, w) VAE-grid sizes of all scales.
    final_hw: (H, W); defaults to the spatial shape of `summed`.

  Returns:
    (B, H, W, d): summed + bilinear-up(codes), or summed + codes at the last
    scale, which the official sampler adds without interpolation.
  """
  final_hw = tuple(summed.shape[1:3]) if final_hw is None else tuple(final_hw)
  if si == len(schedule) - 1:
    return summed + codes
  return summed + resample.bilinear_resize(codes, final_hw)


def next_scale_input(summed: Array, next_hw: HW) -> Array:
  """Transformer input of the next scale (sampler step 3.7).

  Args:
    summed: (B, H, W, d) running sum of codes.
    next_hw: (h, w) of the next scale.

  Returns:
    (B, h, w, d): bilinear ('trilinear') resize of the running sum, with no
    antialias even though it shrinks.
  """
  return resample.bilinear_resize(summed, tuple(next_hw))


def accumulate_bits(bits: Sequence[Array], schedule: Sequence[HW],
                    final_hw: HW | None = None) -> Tuple[Array, List[Array]]:
  """Teacher-forcing pass: running sum and next-scale inputs of given bits.

  Args:
    bits: S arrays (B, h_s, w_s, d) of 0/1 labels, one per scale.
    schedule: static (h, w) of every scale.
    final_hw: full grid (H, W); defaults to schedule[-1].

  Returns:
    summed: (B, H, W, d) final running sum (the decoder input).
    inputs: S - 1 arrays (B, h_{s+1}, w_{s+1}, d), the transformer inputs of
      scales 1..S-1.
  """
  if len(bits) != len(schedule):
    raise ValueError(f'accumulate_bits: {len(bits)} bit maps for '
                     f'{len(schedule)} scales')
  final_hw = tuple(schedule[-1]) if final_hw is None else tuple(final_hw)
  b, d = bits[0].shape[0], bits[0].shape[-1]
  summed = jnp.zeros((b, *final_hw, d), jnp.float32)
  inputs = []
  for si, bits_s in enumerate(bits):
    summed = add_scale_codes(summed, bits_to_codes(bits_s, d), si, schedule,
                             final_hw)
    if si != len(schedule) - 1:
      inputs.append(next_scale_input(summed, schedule[si + 1]))
  return summed, inputs


def multiscale_quantize(h: Array,
                        schedule: Sequence[HW]) -> Tuple[List[Array], Array]:
  """Multi-scale residual BSQ of an encoder output (`MultiScaleBSQ.forward`).

  Args:
    h: (B, H, W, d) raw encoder output.
    schedule: static (h, w) of every scale, coarse to fine.

  Returns:
    bits: S arrays (B, h_s, w_s, d) uint8.
    z: (B, H, W, d) sum of the quantised maps, the decoder input.
  """
  full_hw = tuple(h.shape[1:3])
  residual = h.astype(jnp.float32)
  z = jnp.zeros_like(residual)
  all_bits = []
  for hw in schedule:
    hw = tuple(hw)
    # The official test is "this scale is not the full grid", which for a
    # real schedule means "not the last scale".
    resized = hw != full_hw
    r = resample.area_resize(residual, hw) if resized else residual
    q, bits = quantize(r)
    if resized:
      q = resample.bilinear_resize(q, full_hw)
    residual = residual - q
    z = z + q
    all_bits.append(bits)
  return all_bits, z


# --------------------------------------------------------------------------
# The autoencoder.
# --------------------------------------------------------------------------


class BSQVAE(nn.Module):
  """Encoder + multi-scale BSQ + decoder.

  Call through `model.apply(params, x, method=...)` with `encode_h`, `encode`
  or `decode`; `__call__` (encode_h then decode) exists for `init`.

  Attributes:
    cfg: the tokenizer config (`config.TOKENIZERS[...]`).
  """
  cfg: config_lib.BSQConfig

  def setup(self):
    self.encoder = Encoder(self.cfg)
    self.decoder = Decoder(self.cfg)

  def encode_h(self, img: Array) -> Array:
    """(B, H*s, W*s, 3) image in [-1, 1] -> (B, H, W, d) raw latent."""
    return self.encoder(img)

  def encode(self, img: Array,
             schedule: Sequence[HW]) -> Tuple[List[Array], Array]:
    """Image -> per-scale bits and the quantised sum.

    Args:
      img: (B, H*s, W*s, 3) in [-1, 1].
      schedule: static (h, w) VAE-grid sizes, coarse to fine.

    Returns:
      bits: S arrays (B, h_s, w_s, d) uint8.
      z: (B, H, W, d) float32 summed codes.
    """
    return multiscale_quantize(self.encode_h(img), schedule)

  def decode(self, summed: Array) -> Array:
    """(B, H, W, d) summed codes -> (B, H*s, W*s, 3) image in [-1, 1]."""
    return jnp.clip(self.decoder(summed), -1.0, 1.0)

  def __call__(self, img: Array) -> Array:
    return self.decode(self.encode_h(img))
