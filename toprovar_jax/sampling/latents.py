"""The accumulated latent of the scale loop and the next scale's input.

Two tokenizer families (ARCHITECTURES A.4 and B.6):
  VAR       f̂ (B, Hf, Wf, Cvae) += φ_k(bicubic_up(codebook[idx])) (no resize at
            the last scale); next input = area_down(f̂ → scale k+1).
  Infinity  summed (B, Hf, Wf, d) += bilinear_up((2·bit−1)/√d) (none at the
            last scale); next input = bilinear_resize(summed → scale k+1), no
            antialias. Infinity-8B pixel-(un)shuffles 2×2 latent pixels into
            56-bit tokens with PyTorch's channel order.

Both expose the same three pure functions so the sampler does not care which:
`init(batch)`, `add(state, choice, si)`, `next_input(state, si)`.
Dimension letters: B batch, h, w grid of one scale, N = h·w, d bits.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from toprovar_jax.models import config as config_lib
from toprovar_jax.ops import resample

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class VARLatents:
  """f̂ accumulation through the VQVAE's codebook and φ convs."""
  model: config_lib.TransformerConfig
  tokenizer: config_lib.VQVAEConfig

  def init(self, batch: int) -> Array:
    hf, wf = self.model.schedule[-1]
    return jnp.zeros((batch, hf, wf, self.tokenizer.z_channels), jnp.float32)

  def add(self, vae_params, f_hat: Array, idx: Array, si: int) -> Array:
    """idx (B, N_si) int -> updated f̂."""
    from toprovar_jax.models import vqvae  # local: optional heavy import
    h, w = self.model.schedule[si]
    return vqvae.VQVAE(self.tokenizer).apply(
        vae_params, f_hat, idx.reshape(idx.shape[0], h, w), si,
        method=vqvae.VQVAE.add_scale)

  def next_input(self, vae_params, f_hat: Array, si: int) -> Array:
    """Input features of scale si (≥ 1): (B, N_si, Cvae)."""
    del vae_params
    h, w = self.model.schedule[si]
    x = resample.area_resize(f_hat, (h, w))
    return x.reshape(x.shape[0], h * w, -1)


@dataclasses.dataclass(frozen=True)
class InfinityLatents:
  """Running sum of BSQ codes (param-free)."""
  model: config_lib.TransformerConfig

  @property
  def code_dim(self) -> int:
    return self.model.latent_dim // (4 if self.model.patchify else 1)

  def init(self, batch: int) -> Array:
    hf, wf = config_lib.vae_grid(self.model)
    return jnp.zeros((batch, hf, wf, self.code_dim), jnp.float32)

  def add(self, vae_params, summed: Array, bits: Array, si: int) -> Array:
    """bits (B, N_si, latent_dim) in {0, 1} -> updated running sum."""
    del vae_params
    h, w = self.model.schedule[si]
    b = bits.reshape(bits.shape[0], h, w, -1).astype(jnp.float32)
    if self.model.patchify:
      b = resample.pixel_shuffle(b, 2)
    codes = (2.0 * b - 1.0) / math.sqrt(self.code_dim)
    if si == self.model.num_scales - 1:
      return summed + codes
    return summed + resample.bilinear_resize(codes, summed.shape[1:3])

  def next_input(self, vae_params, summed: Array, si: int) -> Array:
    del vae_params
    h, w = config_lib.vae_grid(self.model, si)
    x = resample.bilinear_resize(summed, (h, w))
    if self.model.patchify:
      x = resample.pixel_unshuffle(x, 2)
    return x.reshape(x.shape[0], -1, x.shape[-1])


def for_model(model: config_lib.TransformerConfig, tokenizer: Any):
  if model.style == "var":
    return VARLatents(model, tokenizer)
  return InfinityLatents(model)
