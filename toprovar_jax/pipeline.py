"""From a config to images: the boundary between configs and the library.

`experiments/*.py` hand the ConfigDict to this module, which turns it into
the frozen, hashable objects the library uses (STYLE.md §8.1, §9.13):
`Sampler` (model and tokenizer configs, `SamplingConfig`, the validated
sparsity plan), host-side `Conditions`, and parameters. Nothing past this
module sees a ConfigDict, and nothing here parses flags, prints or writes
files (writing is `toprovar_jax.io`, called by the experiments).

  sampler_from_config   ConfigDict -> Sampler (validates every field)
  conditions_from_config  labels / prompts -> Conditions (validated)
  load_or_init          checkpoints, or random init when none is configured
  generate_images       Sampler.generate + tokenizer decode, batched
  decode                latent -> uint8 RGB images

Text (Infinity): there is no T5 encoder in the package yet. Until it lands,
prompts become `placeholder_text_features`: a deterministic function of the
prompt string (SHA-256-seeded N(0, 0.3²) features, one row per pseudo-token).
They exercise the whole text path (padding, mask, pooling, cross-attention,
CFG) with the right shapes, but they carry no meaning: images made with them
do not follow the prompt. Results report `text_features:
"placeholder_text_features"` so that this is never mistaken for T5.

Dimension letters: N samples, B batch, T static text length, Ct text feature
width, H, W image height and width.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import re
import time
from typing import Any, Dict, Optional, Sequence, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax import checkpoints
from toprovar_jax.models import bsq_vae
from toprovar_jax.models import config as config_lib
from toprovar_jax.models import transformer
from toprovar_jax.models import vqvae
from toprovar_jax.sampling import plan as plan_lib
from toprovar_jax.sampling import sampler as sampler_lib

Array = jax.Array

RANDOM_INIT = "random-init"
PLACEHOLDER_TEXT = "placeholder_text_features"
# Spread of the placeholder features; RMSNorm in the stem removes the scale,
# 0.3 just keeps the raw values in the range of real T5 activations.
_PLACEHOLDER_STD = 0.3
# Pseudo-tokens of the placeholder: words and single punctuation marks, plus
# one end-of-sequence row as T5 appends </s>.
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_DTYPES = ("float32", "bfloat16")
_ATTN_IMPLS = ("xla", "cudnn", "pallas", "auto")


def _fail(field: str, message: str):
  raise ValueError(f"config.{field}: {message}")


# --------------------------------------------------------------------------
# Config -> frozen objects.
# --------------------------------------------------------------------------


def _validate_sampling(config, model: config_lib.TransformerConfig) -> None:
  """Checks the sampling group; every error names its field."""
  s = config.sampling
  if config.model.dtype not in _DTYPES:
    _fail("model.dtype", f"{config.model.dtype!r} is not one of {_DTYPES}")
  if s.attn_impl not in _ATTN_IMPLS:
    _fail("sampling.attn_impl", f"{s.attn_impl!r} is not one of {_ATTN_IMPLS}")
  if s.top_k < 0:
    _fail("sampling.top_k", f"must be >= 0 (0 = off), got {s.top_k}")
  if not 0.0 <= s.top_p <= 1.0:
    _fail("sampling.top_p", f"must be in [0, 1] (0 = off), got {s.top_p}")
  if s.batch_size < 1:
    _fail("sampling.batch_size", f"must be >= 1, got {s.batch_size}")
  if s.num_samples < 0:
    _fail("sampling.num_samples", f"must be >= 0 (0 = one per condition), "
          f"got {s.num_samples}")
  if not math.isfinite(s.cfg_scale):
    _fail("sampling.cfg_scale", f"must be finite, got {s.cfg_scale}")
  if model.style == "infinity":
    if not (math.isfinite(s.tau) and s.tau > 0):
      _fail("sampling.tau", f"must be a finite number > 0, got {s.tau}")
    if not 1 <= s.text_len <= model.text_maxlen:
      _fail("sampling.text_len", f"must be in [1, {model.text_maxlen}] for "
            f"{model.name} (its cfg_uncond rows), got {s.text_len}")


def sampler_from_config(config) -> sampler_lib.Sampler:
  """Builds the static `Sampler` of a generation config.

  Args:
    config: a config from `configs/*.py` (groups model, sampling, sparsity).

  Returns:
    The frozen, hashable Sampler (jit's static `self`).

  Raises:
    ValueError: unknown variant or an invalid sampling field (named).
    PlanError: the plan is unknown, malformed or does not fit the model (its
      message names the scale and field).
  """
  model = config_lib.get_variant(config.model.variant)
  _validate_sampling(config, model)
  sampling = sampler_lib.SamplingConfig(
      top_k=int(config.sampling.top_k), top_p=float(config.sampling.top_p),
      attn_impl=config.sampling.attn_impl, dtype=config.model.dtype)
  plan = plan_lib.load_plan(config.sparsity.plan, model)
  return sampler_lib.Sampler(
      model=model, tokenizer=config_lib.get_tokenizer(model.name),
      sampling=sampling, plan=plan)


# --------------------------------------------------------------------------
# Conditions.
# --------------------------------------------------------------------------


def placeholder_token_count(prompt: str) -> int:
  """Rows `placeholder_text_features` makes for `prompt` before truncation."""
  return len(_TOKEN_RE.findall(prompt)) + 1


def placeholder_text_features(prompt: str, *, text_dim: int,
                              text_len: int) -> np.ndarray:
  """Deterministic stand-in for T5 features (no text encoder yet).

  NOT a text encoder: the rows are N(0, 0.3²) noise seeded by the SHA-256
  of the prompt, one row per pseudo-token (see `placeholder_token_count`),
  at most `text_len` rows (longer prompts are cut, as T5's 512 cap does).
  The same prompt always gives the same features on every machine.

  Args:
    prompt: the prompt string.
    text_dim: Ct, the model's text feature width.
    text_len: T, the static padded length (the cap).

  Returns:
    (min(count, text_len), text_dim) float32.
  """
  n = min(placeholder_token_count(prompt), text_len)
  digest = hashlib.sha256(prompt.encode("utf-8")).digest()
  rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
  return rng.normal(0.0, _PLACEHOLDER_STD, (n, text_dim)).astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class Conditions:
  """Validated per-sample conditioning of one run (host numpy).

  Attributes:
    labels: (N,) int32 class ids (VAR) or None.
    prompts: N prompt strings (Infinity) or ().
    text: (N, T, Ct) float32 features, zero-padded to T (Infinity) or None.
    text_mask: (N, T) bool, True = real token (Infinity) or None.
    text_lengths: tokens kept per prompt (after truncation).
    truncated: per prompt, whether it was cut to T.
    text_features: what made `text` ('placeholder_text_features') or ''.
  """
  labels: Optional[np.ndarray] = None
  prompts: Tuple[str, ...] = ()
  text: Optional[np.ndarray] = None
  text_mask: Optional[np.ndarray] = None
  text_lengths: Tuple[int, ...] = ()
  truncated: Tuple[bool, ...] = ()
  text_features: str = ""

  @property
  def num_samples(self) -> int:
    return len(self.labels) if self.labels is not None else len(self.prompts)


def _cycle(items: Sequence[Any], num_samples: int) -> list:
  n = num_samples or len(items)
  return [items[i % len(items)] for i in range(n)]


def make_conditions(model: config_lib.TransformerConfig, *,
                    labels: Sequence[int] = (), prompts: Sequence[str] = (),
                    num_samples: int = 0, text_len: int = 0) -> Conditions:
  """Validates labels (VAR) or prompts (Infinity) and builds the inputs.

  Args:
    model: the transformer config (its style picks labels or prompts).
    labels: class ids, VAR only.
    prompts: prompt strings, Infinity only.
    num_samples: images in all; 0 = one per condition, else the conditions
      are cycled.
    text_len: static padded text length T (Infinity).

  Returns:
    Conditions with `num_samples` rows.

  Raises:
    ValueError: naming the field: an empty list, a label that is not an int
      in [0, num_classes), a prompt that is not a string.
  """
  labels, prompts = list(labels), list(prompts)
  if model.style == "var":
    if not labels:
      _fail("sampling.labels", f"is empty; {model.name} needs at least one "
            "ImageNet class id")
    for i, lab in enumerate(labels):
      if isinstance(lab, bool) or not isinstance(lab, (int, np.integer)):
        _fail(f"sampling.labels[{i}]", f"{lab!r} is not an integer")
      if not 0 <= lab < model.num_classes:
        _fail(f"sampling.labels[{i}]", f"{lab} is out of range "
              f"[0, {model.num_classes})")
    return Conditions(
        labels=np.asarray(_cycle(labels, num_samples), np.int32))

  if not prompts:
    _fail("sampling.prompts", f"is empty; {model.name} needs at least one "
          "prompt")
  for i, p in enumerate(prompts):
    if not isinstance(p, str):
      _fail(f"sampling.prompts[{i}]", f"{p!r} is not a string")
  # Features and warnings per listed prompt, not per (cycled) sample.
  feats, counts = [], []
  for i, p in enumerate(prompts):
    counts.append(placeholder_token_count(p))
    if counts[-1] > text_len:
      # SPEC §11: over-long prompts are cut with a warning, like T5's cap.
      logging.warning("sampling.prompts[%d] has %d tokens, more than "
                      "sampling.text_len=%d; truncated to its first %d "
                      "tokens: %r", i, counts[-1], text_len, text_len, p[:80])
    feats.append(placeholder_text_features(p, text_dim=model.text_dim,
                                           text_len=text_len))
  order = _cycle(range(len(prompts)), num_samples)
  text = np.zeros((len(order), text_len, model.text_dim), np.float32)
  mask = np.zeros((len(order), text_len), bool)
  for row, k in enumerate(order):
    text[row, :len(feats[k])] = feats[k]
    mask[row, :len(feats[k])] = True
  prompts = tuple(prompts[k] for k in order)
  lengths = [len(feats[k]) for k in order]
  truncated = [counts[k] > text_len for k in order]
  return Conditions(prompts=prompts, text=text, text_mask=mask,
                    text_lengths=tuple(lengths), truncated=tuple(truncated),
                    text_features=PLACEHOLDER_TEXT)


def conditions_from_config(config, sampler: sampler_lib.Sampler) -> Conditions:
  """`make_conditions` from `config.sampling`."""
  s = config.sampling
  return make_conditions(sampler.model, labels=tuple(s.labels),
                         prompts=tuple(s.prompts), num_samples=s.num_samples,
                         text_len=s.text_len)


# --------------------------------------------------------------------------
# Parameters.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParamsSource:
  """Where the parameters came from: a checkpoint path or RANDOM_INIT."""
  transformer: str
  tokenizer: str

  @property
  def random_init(self) -> bool:
    return RANDOM_INIT in (self.transformer, self.tokenizer)


def _init_tokenizer(model: config_lib.TransformerConfig, tokenizer: Any,
                    rng: Array) -> Dict[str, Any]:
  """Random tokenizer variables {"params": ...} (the full module tree).

  The smallest image that passes every level (one latent pixel) is enough:
  parameter shapes do not depend on the image size.
  """
  if model.style == "var":
    down = 2 ** (len(tokenizer.ch_mult) - 1)
    img = jnp.zeros((1, down, down, tokenizer.in_channels))

    def touch_all(module, img):
      f = module.encode(img)
      module.quantize.touch_all(f)
      return module.decode(f)

    return vqvae.VQVAE(tokenizer).init(rng, img, method=touch_all)
  img = jnp.zeros((1, tokenizer.stride, tokenizer.stride,
                   tokenizer.in_channels))
  return bsq_vae.BSQVAE(tokenizer).init(rng, img)


def _init_options() -> Optional[Dict[str, Any]]:
  # Init runs once; on CPU, XLA's optimisation passes cost 3x the compile time
  # of the tiny VQVAE init (17 s vs 51 s) and save nothing worth having.
  if jax.default_backend() == "cpu":
    return {"xla_backend_optimization_level": 0}
  return None


@functools.lru_cache(maxsize=None)
def _init_transformer_fn(model):
  return jax.jit(functools.partial(transformer.init_params, model),
                 compiler_options=_init_options())


@functools.lru_cache(maxsize=None)
def _init_tokenizer_fn(model, tokenizer):
  return jax.jit(functools.partial(_init_tokenizer, model, tokenizer),
                 compiler_options=_init_options())


def abstract_transformer(model: config_lib.TransformerConfig) -> Any:
  """ShapeDtypeStruct tree of the transformer params; no allocation."""
  return jax.eval_shape(functools.partial(transformer.init_params, model),
                        jax.random.key(0))


def abstract_tokenizer(model: config_lib.TransformerConfig,
                       tokenizer: Any) -> Any:
  """ShapeDtypeStruct tree of the tokenizer variables {"params": ...}."""
  return jax.eval_shape(functools.partial(_init_tokenizer, model, tokenizer),
                        jax.random.key(0))


def abstract_params(sampler: sampler_lib.Sampler) -> Tuple[Any, Any]:
  """(transformer, tokenizer) trees of ShapeDtypeStruct; no allocation.

  These are the layouts `toprovar_jax.checkpoints` restores into and the
  checkpoint converter must write.
  """
  return (abstract_transformer(sampler.model),
          abstract_tokenizer(sampler.model, sampler.tokenizer))


def _load_or_init_one(field: str, path: str, name: str, abstract, init):
  """Restores `path` into `abstract()`, or calls `init()` when path is ''."""
  if path:
    tree = checkpoints.restore_params(path, abstract(),
                                      context=f"config.{field} of {name}")
    return tree, str(checkpoints.checkpoint_path(path))
  logging.warning("config.%s is empty: %s uses RANDOM-INIT parameters; its "
                  "outputs are not meaningful images.", field, name)
  return init(), RANDOM_INIT


def load_or_init(config, rng: Array) -> Tuple[Any, Any, ParamsSource]:
  """Restores the configured checkpoints, or initialises randomly.

  `config.ckpt.transformer` / `config.ckpt.tokenizer` are orbax directories
  or '' for random init (from `rng`); random init is logged as a warning and
  reported in the returned source (SPEC: say so in logs and results).

  Args:
    config: a generation config.
    rng: PRNG key for the random init.

  Returns:
    (params, vae_params, source): transformer params {"stem", "blocks"},
    tokenizer variables {"params": ...} (VAR VQVAE or Infinity BSQ VAE; the
    sampler needs them for VAR, decoding for both) and a ParamsSource.

  Raises:
    FileNotFoundError: a configured checkpoint does not exist.
    ConversionError: a checkpoint with missing / extra / mis-shaped leaves.
  """
  model = config_lib.get_variant(config.model.variant)
  tok = config_lib.get_tokenizer(model.name)
  k_tf, k_tok = jax.random.split(rng)
  params, tf_source = _load_or_init_one(
      "ckpt.transformer", config.ckpt.transformer, model.name,
      abstract=lambda: abstract_transformer(model),
      init=lambda: _init_transformer_fn(model)(k_tf))
  vae_params, tok_source = _load_or_init_one(
      "ckpt.tokenizer", config.ckpt.tokenizer, model.name,
      abstract=lambda: abstract_tokenizer(model, tok),
      init=lambda: _init_tokenizer_fn(model, tok)(k_tok))
  return params, vae_params, ParamsSource(tf_source, tok_source)


# --------------------------------------------------------------------------
# Generation and decoding.
# --------------------------------------------------------------------------


def to_uint8(img: Array) -> Array:
  """[-1, 1] image -> uint8 as torchvision `save_image`: ⌊255·(x+1)/2+½⌋."""
  return jnp.clip(jnp.floor((img + 1.0) * 127.5 + 0.5), 0, 255).astype(
      jnp.uint8)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _decode_uint8(style: str, tokenizer: Any, vae_params, latent: Array):
  if style == "var":
    img = vqvae.VQVAE(tokenizer).apply(vae_params, latent,
                                       method=vqvae.VQVAE.decode)
  else:
    img = bsq_vae.BSQVAE(tokenizer).apply(vae_params, latent,
                                          method=bsq_vae.BSQVAE.decode)
  return to_uint8(img)


def decode(sampler: sampler_lib.Sampler, vae_params, latent: Array) -> Array:
  """Latent of `Sampler.generate` -> (B, H, W, 3) uint8 RGB images.

  VAR: VQVAE decoder of f̂; Infinity: BSQ decoder of the summed codes. Both
  decoders clamp to [-1, 1]; (x + 1) / 2 then maps to [0, 255]. Channels are
  RGB (the official Infinity code flips to BGR for cv2; we do not).
  """
  return _decode_uint8(sampler.model.style, sampler.tokenizer, vae_params,
                       latent)


@dataclasses.dataclass(frozen=True, eq=False)
class Output:
  """Images of one run and how each was made.

  Attributes:
    images: (N, H, W, 3) uint8 RGB.
    seeds: per sample, the PRNG seed of its batch (`seed + batch`).
    batches: per sample, its batch index.
    rows: per sample, its row in the batch (sampling noise depends on the
      seed, the batch size and the row).
    timings: seconds: compile_generate_s, compile_decode_s (lower + XLA
      compile, once), generate_s (all batches, device-synced), decode_s
      (all batches, including the copy to the host).
  """
  images: np.ndarray
  seeds: Tuple[int, ...]
  batches: Tuple[int, ...]
  rows: Tuple[int, ...]
  timings: Dict[str, float]


def generate_images(sampler: sampler_lib.Sampler, params, vae_params,
                    conditions: Conditions, *, seed: int, batch_size: int,
                    cfg_scale: float, tau: float) -> Output:
  """Generates and decodes `conditions.num_samples` images in batches.

  Every batch has the static `batch_size` (the last one is padded by
  repeating its last condition; the extra images are dropped), so the
  sampler compiles once; seeds, conditions, cfg_scale and tau are traced.

  Args:
    sampler: from `sampler_from_config`.
    params: transformer params.
    vae_params: tokenizer variables (from `load_or_init`).
    conditions: from `conditions_from_config` / `make_conditions`.
    seed: batch j uses `jax.random.key(seed + j)`.
    batch_size: images per generate call.
    cfg_scale: guidance scale.
    tau: Infinity logit temperature (VAR ignores it).

  Returns:
    Output.
  """
  if batch_size < 1:
    _fail("sampling.batch_size", f"must be >= 1, got {batch_size}")
  n = conditions.num_samples
  num_batches = -(-n // batch_size)
  # Row -> sample index; padding rows repeat the last sample.
  index = np.minimum(np.arange(num_batches * batch_size), n - 1)
  var = sampler.model.style == "var"

  def inputs(j):
    rows = index[j * batch_size:(j + 1) * batch_size]
    if var:
      cond = dict(labels=jnp.asarray(conditions.labels[rows]))
    else:
      cond = dict(text=jnp.asarray(conditions.text[rows]),
                  text_mask=jnp.asarray(conditions.text_mask[rows]))
    args = (params, vae_params if var else None,
            jax.random.key(seed + j), jnp.float32(cfg_scale), jnp.float32(tau))
    return args, cond

  # AOT compile, timed apart from the runs. XLA's compile cache is shared
  # with jit: a later `sampler.generate` call re-traces but does not compile.
  t0 = time.perf_counter()
  args, cond = inputs(0)
  lowered = type(sampler).generate.lower(sampler, *args, **cond)
  generate = lowered.compile()
  t1 = time.perf_counter()
  latent_info = lowered.out_info.latent
  latent_spec = jax.ShapeDtypeStruct(latent_info.shape, latent_info.dtype)
  dec = _decode_uint8.lower(sampler.model.style, sampler.tokenizer,
                            vae_params, latent_spec).compile()
  t2 = time.perf_counter()

  images, gen_s, dec_s = [], 0.0, 0.0
  for j in range(num_batches):
    args, cond = inputs(j)
    ta = time.perf_counter()
    out = jax.block_until_ready(generate(*args, **cond))
    tb = time.perf_counter()
    images.append(np.asarray(dec(vae_params, out.latent)))
    tc = time.perf_counter()
    gen_s += tb - ta
    dec_s += tc - tb
  images = np.concatenate(images)[:n]
  samples = range(n)
  return Output(
      images=images,
      seeds=tuple(seed + i // batch_size for i in samples),
      batches=tuple(i // batch_size for i in samples),
      rows=tuple(i % batch_size for i in samples),
      timings=dict(compile_generate_s=t1 - t0, compile_decode_s=t2 - t1,
                   generate_s=gen_s, decode_s=dec_s))
