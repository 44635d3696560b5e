"""Training the BSQ VAE (the tokenizer) and measuring its reconstructions.

The step: encoder -> multi-scale residual BSQ with straight-through
gradients -> decoder; loss = L1 + L2 reconstruction + a small commitment
term. Metrics: loss, its parts, PSNR, the fraction of 1-bits, grad norm.

Why multi-scale (the quantiser of inference) rather than single-scale: the
decoder only ever sees, at generation time, the SUM of S bilinearly upsampled
scale codes (`bsq_vae.multiscale_quantize`, the sampler's running sum). That
sum has a different value distribution (not +-1/sqrt(d) per channel, smooth
low-frequency parts from the coarse scales) than a single-scale code map, so
a decoder trained on single-scale codes decodes it poorly. Training through
the same schedule also teaches the encoder to put coarse content where the
coarse scales can take it. It costs little: the scales are tiny next to the
convolutions.

The quantiser here (`st_multiscale_quantize`) has exactly the forward values
of `bsq_vae.multiscale_quantize` (tested), plus the official training
gradients (`MultiScaleBSQ` / `BSQ`): each scale is `u + sg(zhat - u)` with u
the l2-normalised residual (straight-through to u, hence through the
normalisation to the encoder), and the residual subtracts `sg(q)`, so each
scale's gradient reaches the encoder only through its own input. The
commitment term is the official one, mse(u, sg(zhat)) averaged over the
scales: it pulls each normalised residual towards its corner, so the bits the
transformer must predict are less often on a knife edge.

Optionally (`flip_prob`), a random fraction of each scale's bits is flipped
in the forward pass and the later scales quantise the perturbed residual, as
Bitwise Self-Correction does for the transformer: the decoder then also sees
sums that contain wrong bits, as sampled latents do.

Mixed precision: params and activations are cast to `compute_dtype` inside
the loss (master params, the quantiser and the loss stay float32; GroupNorm
statistics are float32 in flax regardless).

Evaluation (`evaluate`): held-out emoji composited on white -> encode with the
generation schedule -> decode (clamped, rounded to uint8 as saved images
are) -> PSNR and SSIM (`metrics.image`: Gaussian 11x11, sigma 1.5, K1 0.01,
K2 0.03, as Wang et al. 2004 and tf.image.ssim, 'valid' windows), in [0, 1]
units.

Dimension letters: B batch, H x W latent grid, s stride, d code bits, S
scales.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from toprovar_jax.metrics import image as image_metrics
from toprovar_jax.models import bsq_vae
from toprovar_jax.models import config as config_lib
from toprovar_jax.ops import resample
from toprovar_jax.training import loop
from toprovar_jax.training import transformer as transformer_training
from toprovar_jax.weights import checkpoints
from toprovar_jax.weights import shards
from toprovar_jax.weights import strict

Array = jax.Array
Schedule = config_lib.Schedule
# The transformer stage's state class, shared (step, params, opt_state).
TrainState = transformer_training.TrainState

# torch.nn.functional.normalize's eps, as in bsq_vae.
_L2_EPS = 1e-12
# Sides of the default schedule (the emoji model's), cut to the latent grid.
_DEFAULT_SIDES = config_lib.EMOJI_SIDES


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenizerObjective:
  """Static settings of the tokenizer loss (hashable, jit-static).

  Attributes:
    schedule: (h, w) VAE-grid sizes of the quantiser, coarse to fine, ending
      at the full latent grid: the generation schedule
      (`training.data.vae_schedule(model)`); None: the emoji sides below the
      grid, then the grid (`default_schedule`).
    l1_weight: weight of mean |x_rec - x|.
    l2_weight: weight of mean (x_rec - x)^2.
    commit_weight: weight of the commitment term (0 = off).
    flip_prob: per-bit flip probability in the quantiser's forward pass
      (0 = off); needs the step's rng.
    compute_dtype: 'float32' or 'bfloat16' for the encoder and decoder.
  """
  schedule: Optional[Schedule] = None
  l1_weight: float = 1.0
  l2_weight: float = 1.0
  commit_weight: float = 0.25
  flip_prob: float = 0.0
  compute_dtype: str = "float32"


def default_schedule(grid_hw: Tuple[int, int]) -> Schedule:
  """The emoji sides smaller than the grid, then the grid itself."""
  h, w = grid_hw
  sides = [s for s in _DEFAULT_SIDES if s < min(h, w)]
  return tuple((s, s) for s in sides) + ((int(h), int(w)),)


def init_state(tok_cfg: config_lib.BSQConfig, rng: Array,
               tx: optax.GradientTransformation) -> TrainState:
  """Random fp32 BSQ VAE params (the inner 'params' dict) and optimiser state.

  The pipeline's tokenizer layout is {"params": state.params}.
  """
  s = tok_cfg.stride
  dummy = jnp.zeros((1, 2 * s, 2 * s, tok_cfg.in_channels), jnp.float32)
  params = bsq_vae.BSQVAE(tok_cfg).init(rng, dummy)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params))


# -----------------------------------------------------------------------------
# Quantiser with straight-through gradients.
# -----------------------------------------------------------------------------


def _l2_normalize(x: Array) -> Array:
  # Forward-identical to bsq_vae._l2_normalize (max(||x||, eps) with sqrt
  # monotone), but with a finite gradient at x = 0.
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x / jnp.sqrt(jnp.maximum(sq, _L2_EPS ** 2))


def st_multiscale_quantize(h: Array, schedule: Sequence[Tuple[int, int]], *,
                           rng: Optional[Array] = None,
                           flip_prob: float = 0.0
                           ) -> Tuple[Array, Array, Array]:
  """Multi-scale residual BSQ for training.

  Args:
    h: (B, H, W, d) raw encoder output.
    schedule: static (h, w) per scale, coarse to fine.
    rng: PRNG key, needed when flip_prob > 0.
    flip_prob: static per-bit flip probability of the forward pass.

  Returns:
    z: (B, H, W, d) float32 sum of the (upsampled) scale codes, the decoder
      input; equal to `bsq_vae.multiscale_quantize(h, schedule)[1]` when
      flip_prob is 0, with straight-through gradients to h.
    commit: () mean over scales of mean((u - sg(zhat))^2).
    bit_mean: () fraction of positive code channels over all scales.
  """
  full_hw = tuple(h.shape[1:3])
  d = h.shape[-1]
  scale = jnp.float32(1.0 / math.sqrt(d))
  residual = h.astype(jnp.float32)
  z = jnp.zeros_like(residual)
  commits, bit_means = [], []
  for si, hw in enumerate(schedule):
    hw = tuple(hw)
    resized = hw != full_hw
    r = resample.area_resize(residual, hw) if resized else residual
    u = _l2_normalize(r)
    zhat = jnp.where(u > 0, 1.0, -1.0).astype(jnp.float32) * scale
    commits.append(jnp.mean(jnp.square(u - jax.lax.stop_gradient(zhat))))
    bit_means.append(jnp.mean((zhat > 0).astype(jnp.float32)))
    if flip_prob > 0.0:
      flip = jax.random.bernoulli(jax.random.fold_in(rng, si), flip_prob,
                                  zhat.shape)
      zhat = jnp.where(flip, -zhat, zhat)
    q = u + jax.lax.stop_gradient(zhat - u)
    if resized:
      q = resample.bilinear_resize(q, full_hw)
    residual = residual - jax.lax.stop_gradient(q)
    z = z + q
  return z, jnp.mean(jnp.stack(commits)), jnp.mean(jnp.stack(bit_means))


# -----------------------------------------------------------------------------
# Loss and step.
# -----------------------------------------------------------------------------


def _decode_raw(module: bsq_vae.BSQVAE, z: Array) -> Array:
  """The decoder without the final clamp (which would stop gradients)."""
  return module.decoder(z)


def _schedule(objective: TokenizerObjective, images: Array,
              tok_cfg: config_lib.BSQConfig) -> Schedule:
  if objective.schedule is not None:
    return tuple(tuple(hw) for hw in objective.schedule)
  s = tok_cfg.stride
  return default_schedule((images.shape[1] // s, images.shape[2] // s))


def loss_fn(params, images: Array, rng: Array, *,
            tok_cfg: config_lib.BSQConfig,
            objective: TokenizerObjective) -> Tuple[Array, Dict[str, Array]]:
  """Reconstruction loss of one batch.

  Args:
    params: BSQ VAE params (the inner 'params' dict), float32.
    images: (B, H*s, W*s, 3) in [-1, 1].
    rng: PRNG key (used by flip_prob).
    tok_cfg, objective: static settings.

  Returns:
    (loss, metrics): loss, l1, l2, commit, psnr (of the clamped output, dB,
    batch mean), bit_mean.
  """
  dtype = jnp.dtype(objective.compute_dtype)
  model = bsq_vae.BSQVAE(tok_cfg)
  variables = {"params": jax.tree.map(lambda p: p.astype(dtype), params)}
  images = images.astype(jnp.float32)
  h = model.apply(variables, images.astype(dtype),
                  method=bsq_vae.BSQVAE.encode_h)
  z, commit, bit_mean = st_multiscale_quantize(
      h, _schedule(objective, images, tok_cfg), rng=rng,
      flip_prob=objective.flip_prob)
  recon = model.apply(variables, z.astype(dtype),
                      method=_decode_raw).astype(jnp.float32)
  err = recon - images
  l1 = jnp.mean(jnp.abs(err))
  l2 = jnp.mean(jnp.square(err))
  loss = (objective.l1_weight * l1 + objective.l2_weight * l2
          + objective.commit_weight * commit)
  clamped = jax.lax.stop_gradient(jnp.clip(recon, -1.0, 1.0))
  metrics = dict(loss=loss, l1=l1, l2=l2, commit=commit,
                 psnr=jnp.mean(image_metrics.psnr(clamped, images,
                                                 data_range=2.0)),
                 bit_mean=bit_mean)
  return loss, metrics


def train_step(state: TrainState, images: Array, rng: Array, *,
               tok_cfg: config_lib.BSQConfig,
               tx: optax.GradientTransformation,
               objective: TokenizerObjective = TokenizerObjective()
               ) -> Tuple[TrainState, Dict[str, Array]]:
  """One optax update of the tokenizer.

  Jit with the keyword arguments static, e.g.
    jax.jit(functools.partial(train_step, tok_cfg=t, tx=tx, objective=o),
            donate_argnums=0)

  Args:
    state: TrainState with the inner BSQ VAE params.
    images: (B, H*s, W*s, 3) float in [-1, 1].
    rng: PRNG key; `state.step` is folded in, so one key serves every step.
    tok_cfg: the tokenizer config (static).
    tx: the optax transformation (static).
    objective: loss settings (static).

  Returns:
    (new state, metrics of the pre-update params, plus grad_norm).
  """
  rng = jax.random.fold_in(rng, state.step)
  grads, metrics = jax.grad(loss_fn, has_aux=True)(
      state.params, images, rng, tok_cfg=tok_cfg, objective=objective)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.global_norm(grads))
  return TrainState(step=state.step + 1, params=params,
                    opt_state=opt_state), metrics


# -----------------------------------------------------------------------------
# Evaluation.
# -----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("tok_cfg", "schedule"))
def reconstruct(params, images: Array, *, tok_cfg: config_lib.BSQConfig,
                schedule: Schedule) -> Array:
  """Encode (multi-scale BSQ, as generation does) and decode, float32.

  Args:
    params: BSQ VAE params (inner dict).
    images: (B, H*s, W*s, 3) in [-1, 1].
    tok_cfg: tokenizer config.
    schedule: static (h, w) per scale.

  Returns:
    (B, H*s, W*s, 3) uint8, rounded like `sampling.runner.to_uint8`.
  """
  model = bsq_vae.BSQVAE(tok_cfg)
  variables = {"params": params}
  _, z = model.apply(variables, images, schedule, method=bsq_vae.BSQVAE.encode)
  out = model.apply(variables, z, method=bsq_vae.BSQVAE.decode)
  return jnp.clip(jnp.floor((out + 1.0) * 127.5 + 0.5), 0, 255).astype(
      jnp.uint8)


@jax.jit
def _image_metrics(a: Array, b: Array) -> Tuple[Array, Array]:
  a = a.astype(jnp.float32) / 255.0
  b = b.astype(jnp.float32) / 255.0
  return image_metrics.psnr(a, b), image_metrics.ssim(a, b)


def _batches(images: np.ndarray, batch_size: int):
  """Yields (padded uint8 batch, number of real images); one shape for all."""
  for start in range(0, images.shape[0], batch_size):
    chunk = images[start:start + batch_size]
    real = chunk.shape[0]
    if real < batch_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - real,
                                               axis=0)])
    yield chunk, real


def reconstruct_images(params, images: np.ndarray, *,
                       tok_cfg: config_lib.BSQConfig, schedule: Schedule,
                       batch_size: int = 64) -> np.ndarray:
  """`reconstruct` of (N, S, S, 3) uint8 images in padded batches.

  Every call is padded to exactly `batch_size` images, so `evaluate` and
  this function share one compiled program when given the same batch size.

  Returns:
    (N, S, S, 3) uint8.
  """
  schedule = tuple(tuple(int(v) for v in hw) for hw in schedule)
  out = []
  for chunk, real in _batches(np.asarray(images), batch_size):
    x = chunk.astype(np.float32) / 127.5 - 1.0
    rec = reconstruct(params, x, tok_cfg=tok_cfg, schedule=schedule)
    out.append(np.asarray(rec)[:real])
  return np.concatenate(out)


def evaluate(params, images: np.ndarray, *, tok_cfg: config_lib.BSQConfig,
             schedule: Schedule, batch_size: int = 64) -> Dict[str, float]:
  """Reconstruction quality on held-out images.

  Args:
    params: BSQ VAE params (inner dict).
    images: (N, S, S, 3) uint8, e.g. `augment.composite` of held-out RGBA.
    tok_cfg: tokenizer config.
    schedule: the generation schedule (static).
    batch_size: images per jitted call (the last batch is padded, so one
      compile serves every N).

  Returns:
    {'psnr': mean dB (inf if all images are exact), 'ssim': mean}.
  """
  images = np.asarray(images)
  schedule = tuple(tuple(int(v) for v in hw) for hw in schedule)
  psnrs, ssims = [], []
  for chunk, real in _batches(images, batch_size):
    x = chunk.astype(np.float32) / 127.5 - 1.0
    rec = reconstruct(params, x, tok_cfg=tok_cfg, schedule=schedule)
    p, s = jax.device_get(_image_metrics(rec, chunk))
    psnrs.append(p[:real])
    ssims.append(s[:real])
  return dict(psnr=float(np.mean(np.concatenate(psnrs))),
              ssim=float(np.mean(np.concatenate(ssims))))


def load_trained(path: str, tok_cfg: config_lib.BSQConfig,
                 name: str = "tokenizer") -> Dict[str, Any]:
  """Trained tokenizer variables {"params": ...} as float32 jax arrays.

  Args:
    path: a tokenizer-stage workdir (reads its `export/`), an export folder
      (`<name>.manifest.json`), or an orbax params checkpoint written by
      `weights.checkpoints.save_params`.
    tok_cfg: the tokenizer config; the tree is checked against its layout.
    name: the export's name.

  Raises:
    FileNotFoundError: nothing loadable at `path`.
    ConversionError: the tree does not match `tok_cfg` (all leaves listed).
  """
  root = pathlib.Path(path)
  abstract = jax.eval_shape(
      lambda: {"params": init_state(tok_cfg, jax.random.key(0),
                                    optax.identity()).params})
  for folder in (root / loop.EXPORT_DIR, root):
    if (folder / f"{name}.manifest.json").exists():
      tree, _ = shards.load_shards(folder, name, dtype=np.float32)
      strict.check_against(tree, abstract, context=str(folder))
      return jax.tree.map(jnp.asarray, tree)
  return checkpoints.restore_params(root, abstract, context="tokenizer")
