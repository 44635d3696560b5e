"""Per-image policies of a `branching.Branching`: SkipVAR and adaptive.

  SkipVarPolicy   SkipVAR (ARCHITECTURES C.2): the latents after scales
                  d - 2 (old) and d - 1 (new), resized to a small scale's
                  grid and decoded; HF_Diff = mean |Sobel(new) - Sobel(old)|
                  of the grey images, HF_Ratio = FFT amplitude of the new
                  grey image outside radius int(freq_ratio·min(H, W) / 2)
                  over the total; a logistic regression picks the action.
  AdaptivePolicy  adaptive ToProVAR (`sparsity.adaptive`): ρ_s of each
                  image at the statistic scales from the prefix's recorded
                  entropy; thresholds on their mean pick the plan.

Features are traced inside `Branching.run_prefix` (jnp); `choose` runs on
the host (numpy). Both are frozen dataclasses (part of jit's static self).
Dimension letters: B batch, H x W image, L layers, N_s tokens of scale s.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax.models import bsq_vae
from toprovar_jax.models import config as config_lib
from toprovar_jax.models import vqvae
from toprovar_jax.ops import resample
from toprovar_jax.sampling import branching
from toprovar_jax.sparsity import adaptive as adaptive_lib
from toprovar_jax.sparsity import baselines
from toprovar_jax.sparsity import classifier as classifier_lib
from toprovar_jax.sparsity import named

Array = jax.Array


def small_decode(model: config_lib.TransformerConfig, tokenizer, vae_params,
                 latent: Array, scale: int) -> Array:
  """The latent resized to scale `scale`'s grid and decoded: (B, h, w, 3)
  in [-1, 1]. Infinity resizes the summed codes bilinearly (SkipVAR's
  z_interplote_up), VAR f̂ by area."""
  if model.style == "var":
    small = resample.area_resize(latent, model.schedule[scale])
    return vqvae.VQVAE(tokenizer).apply(vae_params, small,
                                        method=vqvae.VQVAE.decode)
  small = resample.bilinear_resize(latent, config_lib.vae_grid(model, scale))
  return bsq_vae.BSQVAE(tokenizer).apply(vae_params, small,
                                         method=bsq_vae.BSQVAE.decode)


def sobel_magnitude(gray: Array) -> Array:
  """(B, H, W) -> (B, H, W) gradient magnitude: the official 3x3 Sobel
  cross-correlation with zero padding 1."""
  kx = jnp.array([[1., 0., -1.], [2., 0., -2.], [1., 0., -1.]])
  g = jnp.pad(gray, ((0, 0), (1, 1), (1, 1)))
  h, w = gray.shape[1:]
  gx = sum(kx[i, j] * g[:, i:i + h, j:j + w] for i in range(3)
           for j in range(3))
  gy = sum(kx[j, i] * g[:, i:i + h, j:j + w] for i in range(3)
           for j in range(3))
  return jnp.sqrt(gx ** 2 + gy ** 2)


def hf_ratio(gray: Array, freq_ratio: float) -> Array:
  """(B, H, W) -> (B,) share of the centred FFT amplitude farther than
  int(freq_ratio·min(H, W) / 2) from the centre (H // 2, W // 2)."""
  h, w = gray.shape[1:]
  amp = jnp.abs(jnp.fft.fftshift(jnp.fft.fft2(gray), axes=(1, 2)))
  radius = int(freq_ratio * min(h, w) / 2)
  y, x = np.mgrid[:h, :w]
  mask = np.sqrt((y - h // 2) ** 2 + (x - w // 2) ** 2) > radius
  return jnp.sum(amp * mask, axis=(1, 2)) / (jnp.sum(amp, axis=(1, 2)) + 1e-6)


def hf_features(old_img: Array, new_img: Array, freq_ratio: float) -> Array:
  """(B, H, W, 3) images in [-1, 1] -> (B, 2): [HF_Diff, HF_Ratio]."""
  old_g, new_g = old_img.mean(axis=-1), new_img.mean(axis=-1)
  diff = jnp.mean(jnp.abs(sobel_magnitude(new_g) - sobel_magnitude(old_g)),
                  axis=(1, 2))
  return jnp.stack([diff, hf_ratio(new_g, freq_ratio)], axis=1)


@dataclasses.dataclass(frozen=True)
class SkipVarPolicy:
  """SkipVAR's decision from a trained `classifier.SkipVarSpec`."""
  spec: classifier_lib.SkipVarSpec
  needs_entropy = False

  def features(self, br, vae_params, latents, st) -> Array:
    del st
    d = br.decision_scale
    if d < 2:
      raise ValueError("SkipVAR needs a decision scale >= 2 (two latents)")
    both = jnp.concatenate([latents[d - 2], latents[d - 1]])
    imgs = small_decode(br.model, br.tokenizer, vae_params, both,
                        self.spec.feature_scale).astype(jnp.float32)
    b = latents[0].shape[0]
    return hf_features(imgs[:b], imgs[b:], self.spec.freq_ratio)

  def choose(self, feats: np.ndarray) -> np.ndarray:
    return self.spec.classifier.predict(feats)


def rho(entropy: Array) -> Array:
  """(L, B, N) entropies (NaN for layers that are not F) -> (B,) ρ: the
  fraction of tokens whose layer-mean entropy is below the image's mean."""
  h = jnp.nanmean(entropy, axis=0)
  return jnp.mean(h < jnp.mean(h, axis=1, keepdims=True), axis=1)


@dataclasses.dataclass(frozen=True)
class AdaptivePolicy:
  """Adaptive ToProVAR's decision from an `adaptive.AdaptiveSpec`."""
  spec: adaptive_lib.AdaptiveSpec
  needs_entropy = True

  def features(self, br, vae_params, latents, st) -> Array:
    """(B, len(statistic_scales)) ρ_s per image."""
    del br, vae_params, latents
    return jnp.stack([rho(st.entropy[s]) for s in self.spec.statistic_scales],
                     axis=1)

  def choose(self, feats: np.ndarray) -> np.ndarray:
    return self.spec.choose(np.asarray(feats).mean(axis=1))


# -- generators from specs --------------------------------------------------


def skipvar_branching(base, spec: classifier_lib.SkipVarSpec):
  """The SkipVAR generator: one suffix plan per class (`baselines`' action
  names, 'skipvar_skipK[_uncondS]', or any plan spec), on `base`'s model,
  sampling and execution."""
  if spec.model != base.model.name:
    raise ValueError(f"skipvar classifier: field 'model': trained on "
                     f"{spec.model!r}, not {base.model.name!r}")
  plans = [baselines.skipvar_action_plan(c, base.model)
           or named.load_plan(c, base.model) for c in spec.classes]
  return branching.Branching(
      name="skipvar", decision_scale=spec.decision_scale,
      suffixes=tuple(dataclasses.replace(base, plan=p) for p in plans),
      policy=SkipVarPolicy(spec))


def adaptive_branching(base, spec: adaptive_lib.AdaptiveSpec):
  """The adaptive ToProVAR generator of a resolved spec."""
  return branching.Branching(
      name=spec.name, decision_scale=spec.decision_scale,
      suffixes=tuple(dataclasses.replace(base, plan=p) for p in spec.plans),
      policy=AdaptivePolicy(spec))
