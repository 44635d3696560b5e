"""One training step of the Infinity-style next-scale transformer.

What the official `InfinityTrainer.train_step` does (ARCHITECTURES B.6, B.8),
in pure functions:

  1. `make_inputs`: the frozen BSQ encoder turns images into raw latents h;
     the residual of every scale is quantised into its ground-truth bits, and
     the teacher-forcing inputs are built from the chosen bits exactly as the
     sampler builds its next-scale inputs (`sampling.latents.InfinityLatents`:
     codes (2b-1)/sqrt(d), bilinear-up to the final grid except at the last
     scale, next input = bilinear resize of the running sum). With Bitwise
     Self-Correction (`bsc > 0`, official `flip_requant`) the chosen bits are
     the ground truth with random flips, so later residuals, labels and inputs
     all follow the perturbed sum.
  2. `loss_fn`: classifier-free text dropout (a dropped sample's text becomes
     `cfg_uncond[:T]`, its mask kept), the teacher-forced block-causal forward,
     per-bit 2-way cross-entropy averaged over the d bits of a token, tokens
     weighted by 1/sqrt(h*w) of their scale and normalised to sum 1
     (`reweight_loss_by_scale=1`), averaged over the batch.
  3. `train_step`: both of the above plus one optax update.

Dimension letters: B batch, S scales, L = sum_s h_s*w_s tokens, d bits per
token (`model_cfg.latent_dim`), d' bits per VAE latent pixel (d / 4 with
2x2 patchify, else d), T text tokens, Ct text feature width.

Jit with every keyword config static, e.g.
  step = jax.jit(functools.partial(train_step, model_cfg=m, tok_cfg=t, tx=tx,
                                   bsc=0.3), donate_argnums=0)
(optax's GradientTransformation is a hashable NamedTuple of functions, so
`static_argnames=("model_cfg", "tok_cfg", "tx", ...)` works as well).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from toprovar_jax.models import bsq_vae
from toprovar_jax.models import config as config_lib
from toprovar_jax.models import transformer
from toprovar_jax.ops import resample
from toprovar_jax.sampling import latents as latents_lib

Array = jax.Array
Metrics = Dict[str, Array]


@flax.struct.dataclass
class TrainState:
  """Everything that changes from step to step.

  Attributes:
    step: () int32, number of updates applied so far.
    params: transformer params ({"stem", "blocks"}).
    opt_state: the optax state of `params`.
  """
  step: Array
  params: Any
  opt_state: Any


def init_state(model_cfg: config_lib.TransformerConfig, rng: Array,
               tx: optax.GradientTransformation) -> TrainState:
  """Random fp32 transformer params and a fresh optimiser state."""
  params = transformer.init_params(model_cfg, rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params))


def _check_infinity(model_cfg) -> None:
  if model_cfg.style != "infinity":
    raise ValueError(f"model_cfg.style: training here is Infinity-style only, "
                     f"got {model_cfg.style!r}")


# -----------------------------------------------------------------------------
# Teacher-forcing inputs and labels.
# -----------------------------------------------------------------------------


def make_inputs(tok_params, images: Array, *,
                tok_cfg: config_lib.BSQConfig,
                model_cfg: config_lib.TransformerConfig,
                rng: Optional[Array] = None,
                bsc: float = 0.0) -> Tuple[Array, Array]:
  """Labels and teacher-forcing inputs of a batch of images.

  Follows the official `BitwiseSelfCorrection.flip_requant`: at scale s the
  residual h - summed is area-downsampled to (h_s, w_s) (not at the last
  scale) and BSQ-quantised into the labels of scale s. With `bsc > 0` every
  sample draws p ~ U[0, bsc] per scale and each bit is flipped with
  probability p; the running sum (and hence the next inputs and every later
  residual and label) uses the flipped bits, while the labels of scale s stay
  the unflipped ones. Scale 0's labels never change.

  Differences from the official code, on purpose: p is drawn per sample and is
  continuous (official: one p per batch and scale on a 0.01 grid), and flips
  apply to every scale (official `--noise_apply_layers 13` covers all 13
  scales of its schedules; flips of the last scale never matter). The running
  sum always uses the codes of the chosen bits, so without flips the inputs
  are bit-for-bit the sampler's (official: the quantiser's straight-through
  output, equal to within one ulp).

  Args:
    tok_params: frozen BSQ VAE variables ({"params": ...}), as for
      `BSQVAE(tok_cfg).apply`.
    images: (B, H*stride, W*stride, 3) in [-1, 1]; (H, W) must be the VAE
      grid of the last scale of `model_cfg.schedule`.
    tok_cfg: the tokenizer config (static).
    model_cfg: the transformer config (static); its `latent_dim` is
      `tok_cfg.codebook_dim` (x4 with `patchify`).
    rng: PRNG key, required when `bsc > 0`.
    bsc: static maximum flip probability (0 = plain teacher forcing).

  Returns:
    gt_bits: (B, L, d) uint8 labels, scale-major, row-major within a scale.
    inputs: (B, L - 1, d) float32 inputs of scales 1..S-1, flattened the same
      way (the `inputs` of `transformer.teacher_forced_logits`).

  Raises:
    ValueError: on a config / image-size mismatch, or bsc > 0 without rng.
  """
  _check_infinity(model_cfg)
  acc = latents_lib.InfinityLatents(model_cfg)
  if acc.code_dim != tok_cfg.codebook_dim:
    raise ValueError(
        f"model_cfg.latent_dim: {model_cfg.latent_dim} does not match "
        f"tok_cfg.codebook_dim {tok_cfg.codebook_dim}"
        f"{' x 4 (patchify)' if model_cfg.patchify else ''}")
  final_hw = config_lib.vae_grid(model_cfg)
  want = (final_hw[0] * tok_cfg.stride, final_hw[1] * tok_cfg.stride)
  if tuple(images.shape[1:3]) != want:
    raise ValueError(f"images: spatial size {tuple(images.shape[1:3])} != "
                     f"{want} (last scale {final_hw} x stride "
                     f"{tok_cfg.stride})")
  if bsc < 0.0 or bsc > 1.0:
    raise ValueError(f"bsc: flip probability bound {bsc} not in [0, 1]")
  if bsc > 0.0 and rng is None:
    raise ValueError("make_inputs: bsc > 0 needs an rng")

  h = bsq_vae.BSQVAE(tok_cfg).apply(tok_params, images,
                                    method=bsq_vae.BSQVAE.encode_h)
  # The tokenizer is frozen: no gradient reaches it.
  h = jax.lax.stop_gradient(h.astype(jnp.float32))
  b = h.shape[0]
  num_scales = model_cfg.num_scales
  summed = acc.init(b)  # (B, Hf, Wf, d') running sum of chosen codes
  gt_all, inputs = [], []
  for si in range(num_scales):
    vae_hw = config_lib.vae_grid(model_cfg, si)
    residual = h - summed
    if si != num_scales - 1:
      residual = resample.area_resize(residual, vae_hw)
    _, bits = bsq_vae.quantize(residual)  # (B, h', w', d') uint8
    if model_cfg.patchify:
      # Official: torch pixel_unshuffle of the (B, d', H, W) labels.
      bits = resample.pixel_unshuffle(bits, 2)
    bits = bits.reshape(b, -1, model_cfg.latent_dim)  # (B, N_si, d)
    gt_all.append(bits)
    chosen = bits
    if bsc > 0.0:
      k_p, k_flip = jax.random.split(jax.random.fold_in(rng, si))
      p = jax.random.uniform(k_p, (b, 1, 1), maxval=bsc)
      flip = jax.random.uniform(k_flip, bits.shape) < p
      chosen = jnp.where(flip, 1 - bits, bits)
    # The sampler's own accumulation: teacher forcing == sampling with
    # forced choices (tests/training/transformer_test.py).
    summed = acc.add(None, summed, chosen, si)
    if si < num_scales - 1:
      inputs.append(acc.next_input(None, summed, si + 1))
  gt_bits = jnp.concatenate(gt_all, axis=1).astype(jnp.uint8)
  return gt_bits, jnp.concatenate(inputs, axis=1)


# -----------------------------------------------------------------------------
# Loss.
# -----------------------------------------------------------------------------


def scale_weights(model_cfg: config_lib.TransformerConfig) -> np.ndarray:
  """(L,) float32 per-token loss weights, summing to 1.

  Official `reweight_loss_by_scale=1`: a token of an h x w scale weighs
  sqrt(H_last*W_last) / sqrt(h*w) (the "64/sqrt(h*w)" of the 1M schedule),
  then all weights are divided by their sum. A scale's total weight therefore
  grows as sqrt(h*w), not as h*w.
  """
  last = math.sqrt(float(np.prod(model_cfg.schedule[-1])))
  w = np.concatenate([np.full(h * w, last / math.sqrt(h * w), np.float64)
                      for h, w in model_cfg.schedule])
  return (w / w.sum()).astype(np.float32)


def drop_text(params, text: Array, text_mask: Array, *,
              model_cfg: config_lib.TransformerConfig, rng: Array,
              cond_drop: float) -> Array:
  """Classifier-free dropout of the text condition.

  Each sample is replaced with probability `cond_drop` by the learned
  `cfg_uncond[:T]` (the sampler's unconditional branch), keeping its mask,
  as the official forward does with `cfg_uncond[:len]` per prompt. The
  replacement is the parameter itself, so it is trained.

  Args:
    params: transformer params.
    text: (B, T, Ct) raw text features.
    text_mask: (B, T) bool.
    model_cfg: transformer config.
    rng: PRNG key.
    cond_drop: probability in [0, 1] (Python float or traced); a static 0
      returns `text` unchanged.

  Returns:
    (B, T, Ct) text features (float32 when dropout is on).
  """
  if isinstance(cond_drop, (int, float)) and cond_drop == 0:
    return text  # static 0: skip the uncond lookup altogether
  stem = transformer.stem_module(model_cfg)
  unc = stem.apply({"params": params["stem"]}, text_mask,
                   method=transformer.Stem.uncond_text)
  drop = jax.random.uniform(rng, (text.shape[0],)) < cond_drop
  # float32 either way: the stem RMS-normalises text in float32, and the
  # gradient reaching cfg_uncond should not pass through a low-precision cast.
  return jnp.where(drop[:, None, None], unc.astype(jnp.float32),
                   text.astype(jnp.float32))


def model_logits(params, inputs: Array, text: Array, text_mask: Array, *,
                 model_cfg: config_lib.TransformerConfig, rng: Array,
                 cond_drop: float = 0.1, dtype: Any = "float32",
                 impl: str = "xla", remat: bool = False) -> Array:
  """The forward of `loss_fn`: text dropout + teacher-forced logits.

  Args:
    params: transformer params.
    inputs: (B, L - 1, d) teacher-forcing inputs (`make_inputs`).
    text: (B, T, Ct) raw text features; text_mask (B, T) bool.
    model_cfg: transformer config.
    rng: PRNG key of the text dropout.
    cond_drop: text dropout probability.
    dtype: compute dtype of the blocks ("float32" or "bfloat16"); params,
      residual stream and logits stay float32.
    impl: self-attention implementation (see `ops.attention`).
    remat: recompute blocks in the backward pass
      (`transformer.teacher_forced_logits`).

  Returns:
    (B, L, 2d) float32 logits; index 2k + v of token l = "bit k of token l
    is v".
  """
  text = drop_text(params, text, text_mask, model_cfg=model_cfg, rng=rng,
                   cond_drop=cond_drop)
  logits = transformer.teacher_forced_logits(
      params, model_cfg, inputs=inputs, text=text, text_mask=text_mask,
      dtype=jnp.dtype(dtype), impl=impl, remat=remat)
  return logits.astype(jnp.float32)


def bit_loss(logits: Array, gt_bits: Array, *,
             model_cfg: config_lib.TransformerConfig) -> Tuple[Array, Metrics]:
  """Scale-reweighted per-bit cross-entropy and accuracies.

  Args:
    logits: (B, L, 2d) logits (see `model_logits`).
    gt_bits: (B, L, d) labels in {0, 1}.
    model_cfg: transformer config (schedule and d).

  Returns:
    loss: () sum_l w_l * mean_k CE(token l, bit k), averaged over B.
    metrics: loss; loss_last (unweighted mean CE of the last scale); bit_acc
      (all bits, unweighted); bit_acc_last (bits of the last scale).
  """
  b, seq, _ = logits.shape
  d = model_cfg.latent_dim
  pairs = logits.astype(jnp.float32).reshape(b, seq, d, 2)
  labels = gt_bits.astype(jnp.int32)
  ce = optax.softmax_cross_entropy_with_integer_labels(pairs, labels)
  per_token = ce.mean(-1)  # (B, L)
  w = jnp.asarray(scale_weights(model_cfg))
  loss = jnp.mean(jnp.sum(per_token * w, axis=-1))
  # Ties (equal pair logits) count as predicting 0, like torch's argmax.
  correct = ((pairs[..., 1] > pairs[..., 0]).astype(jnp.int32) == labels)
  correct = correct.astype(jnp.float32)
  last = model_cfg.scale_offsets[-2]
  metrics = dict(loss=loss, loss_last=per_token[:, last:].mean(),
                 bit_acc=correct.mean(), bit_acc_last=correct[:, last:].mean())
  return loss, metrics


def loss_fn(params, batch_inputs: Array, gt_bits: Array, text: Array,
            text_mask: Array, *, model_cfg: config_lib.TransformerConfig,
            rng: Array, cond_drop: float = 0.1, dtype: Any = "float32",
            impl: str = "xla", remat: bool = False) -> Tuple[Array, Metrics]:
  """Training loss of one batch.

  Args:
    params: transformer params (differentiated).
    batch_inputs: (B, L - 1, d) teacher-forcing inputs.
    gt_bits: (B, L, d) uint8 labels.
    text: (B, T, Ct) raw text features; text_mask (B, T) bool.
    model_cfg: transformer config (static).
    rng: PRNG key of the text dropout.
    cond_drop: text dropout probability (static or traced).
    dtype: block compute dtype, "float32" or "bfloat16" (static).
    impl: self-attention implementation (static).
    remat: recompute blocks in the backward pass (static).

  Returns:
    (loss, metrics) as `bit_loss`.
  """
  _check_infinity(model_cfg)
  logits = model_logits(params, batch_inputs, text, text_mask,
                        model_cfg=model_cfg, rng=rng, cond_drop=cond_drop,
                        dtype=dtype, impl=impl, remat=remat)
  return bit_loss(logits, gt_bits, model_cfg=model_cfg)


# -----------------------------------------------------------------------------
# The step.
# -----------------------------------------------------------------------------


def train_step(state: TrainState, tok_params, batch: Dict[str, Array],
               rng: Array, *, model_cfg: config_lib.TransformerConfig,
               tok_cfg: config_lib.BSQConfig,
               tx: optax.GradientTransformation, cond_drop: float = 0.1,
               bsc: float = 0.0, dtype: Any = "float32",
               impl: str = "xla", remat: bool = False
               ) -> Tuple[TrainState, Metrics]:
  """Encode, build teacher-forcing inputs, one gradient update.

  Args:
    state: TrainState.
    tok_params: frozen BSQ VAE variables ({"params": ...}).
    batch: images (B, H, W, 3) in [-1, 1], text (B, T, Ct) float, text_mask
      (B, T) bool.
    rng: PRNG key of this step; `state.step` is folded in, so reusing one key
      every step still gives fresh flips and dropouts.
    model_cfg, tok_cfg, tx: static configs and the optax transformation.
    cond_drop: text dropout probability.
    bsc: Bitwise Self-Correction maximum flip probability (static).
    dtype: block compute dtype (static).
    impl: self-attention implementation (static).
    remat: recompute blocks in the backward pass (static).

  Returns:
    (new state, metrics): the `bit_loss` metrics of the pre-update params
    plus grad_norm (global L2 norm of the gradient).
  """
  rng = jax.random.fold_in(rng, state.step)
  k_bsc, k_drop = jax.random.split(rng)
  gt_bits, inputs = make_inputs(tok_params, batch["images"], tok_cfg=tok_cfg,
                                model_cfg=model_cfg, rng=k_bsc, bsc=bsc)
  grads, metrics = jax.grad(loss_fn, has_aux=True)(
      state.params, inputs, gt_bits, batch["text"], batch["text_mask"],
      model_cfg=model_cfg, rng=k_drop, cond_drop=cond_drop, dtype=dtype,
      impl=impl, remat=remat)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.global_norm(grads))
  return TrainState(step=state.step + 1, params=params,
                    opt_state=opt_state), metrics
