"""Shared pieces of every config: the typed `:key=value` parser and the base.

Each `configs/<model>.py` calls `parse_arg` on the string after the colon of
`--config=configs/<model>.py:<arg>` and then `get_base_config`, which returns
the full, locked ConfigDict (STYLE.md §8.4, §9.6-9.10). Locking means a typo
in a `--config.a.b=value` override fails instead of adding a new field.

Groups (SPEC §9): `model`, `sampling`, `sparsity`, `ckpt`, `mesh`, `seed`.
The ConfigDict stops at `toprovar_jax.pipeline`, which turns it into the
frozen objects the library uses (`Sampler`, `SamplingConfig`, the plan).

Configs are data: arguments are parsed by type, never evaluated (SPEC §11).
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import ml_collections

from toprovar_jax.models import config as model_config_lib
from toprovar_jax.sampling import conditions as conditions_lib

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

# VAR demo notebook settings: cfg 4, top-k 900, top-p 0.95 (ARCHITECTURES
# A.4 "Defaults"; the README's FID protocol uses cfg 1.5, top-p 0.96).
VAR_SAMPLING = dict(cfg_scale=4.0, tau=1.0, top_k=900, top_p=0.95)
# Infinity-2B: cfg 3, τ 0.5, top-k 900 (a no-op on bit pairs), top-p 0.97
# (ARCHITECTURES B.6, 2B notebook / reproduce.py). 8B notebooks use τ 1.0.
INFINITY_SAMPLING = dict(cfg_scale=3.0, tau=0.5, top_k=900, top_p=0.97)
# The embedded emoji model (configs/emoji.py, evaluate_emoji): Infinity-2B's
# rules until the sweep on the trained v2 weights picks its own
# (experiments/sweep_emoji_sampling.py: retrieval against the diversity of a
# caption's samples; v1's four samples at these rules were near-copies).
EMOJI_SAMPLING = dict(INFINITY_SAMPLING)
# The VAR demo's class labels (ImageNet ids).
VAR_LABELS = (207, 360, 387, 974, 88, 979, 417, 279)
INFINITY_PROMPTS = (
    "a photo of a red fox sitting in fresh snow, golden hour",
    "an astronaut riding a horse on the moon, digital art",
    "a bowl of ramen with a soft boiled egg, studio lighting",
    "a lighthouse on a rocky coast during a storm, oil painting",
)
# Infinity pads T5 features to 512 tokens, the official T5 cap (SPEC §2).
INFINITY_TEXT_LEN = 512
# What a bad prompts file's error names (SPEC §11: one line, the field).
PROMPTS_FILE_FIELD = "config arg 'prompts_file'"


def _parse_value(key: str, raw: str, default: Any) -> Any:
  """Converts `raw` to the type of `default`, naming `key` on failure."""
  kind = type(default)
  try:
    if kind is bool:
      low = raw.strip().lower()
      if low in _TRUE:
        return True
      if low in _FALSE:
        return False
      raise ValueError(f"not one of {_TRUE + _FALSE}")
    if kind is int:
      return int(raw)
    if kind is float:
      return float(raw)
    if kind is str:
      return raw
  except ValueError as e:
    raise ValueError(
        f"config arg {key!r}: expected {kind.__name__}, got {raw!r} ({e})"
    ) from None
  raise TypeError(f"config arg {key!r}: default of unsupported type {kind}")


def parse_arg(arg: Optional[str], **defaults: Any) -> ml_collections.ConfigDict:
  """Parses `key=value,key2=value2` into a typed, locked ConfigDict.

  Modelled on big_vision's `parse_arg`: every key must be declared in
  `defaults`, whose values fix the types (bool, int, float or str). A bare
  word `key` means `key=True` and is only allowed for bool keys.

  Args:
    arg: the string after `config.py:` (None or '' gives the defaults).
    **defaults: the known keys and their default values.

  Returns:
    A locked ConfigDict with every key of `defaults`.

  Raises:
    ValueError: an unknown or repeated key (the message lists the known
      keys), a bare word for a non-bool key, or a value of the wrong type
      (the message names the key).
  """
  out = dict(defaults)
  seen = set()
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, raw = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"config arg: unknown key {key!r}; known keys: "
                       f"{sorted(defaults)}")
    if key in seen:
      raise ValueError(f"config arg {key!r}: given twice in {arg!r}")
    seen.add(key)
    if not sep:
      if not isinstance(defaults[key], bool):
        raise ValueError(
            f"config arg {key!r}: a bare word means True, but {key!r} is a "
            f"{type(defaults[key]).__name__}; write {key}=<value>")
      out[key] = True
    else:
      out[key] = _parse_value(key, raw, defaults[key])
  parsed = ml_collections.ConfigDict(out)
  parsed.lock()
  return parsed


def get_base_config(*, variant: str, batch_size: int, cfg_scale: float,
                    tau: float, top_k: int, top_p: float,
                    labels: Sequence[int] = VAR_LABELS,
                    prompts: Sequence[str] = INFINITY_PROMPTS,
                    text_len: int = INFINITY_TEXT_LEN,
                    plan: str = "dense", ckpt_dir: str = "",
                    dtype: str = "float32", t5_dir: str = "",
                    h_div_w: float = 1.0, pixels: str = "",
                    prompts_file: str = "",
                    samples_per_prompt: int = 1
                    ) -> ml_collections.ConfigDict:
  """The full generation config for one model variant (locked).

  Args:
    variant: a key of `toprovar_jax.models.config.VARIANTS`.
    batch_size: samples per generate call; 0 = all in one.
    cfg_scale, tau, top_k, top_p: sampling defaults of the official code.
    labels: ImageNet class ids (VAR).
    prompts: text prompts (Infinity).
    text_len: static padded text length T (Infinity).
    plan: 'dense' | 'fastvar' | a named plan | a plan JSON path.
    ckpt_dir: '' (random init) or a folder holding orbax `transformer/` and
      `tokenizer/` checkpoints (`toprovar_jax.checkpoints`).
    dtype: transformer compute dtype.
    t5_dir: a Flan-T5 folder (config.json, weights, tokenizer) whose
      features condition an Infinity model; '' = placeholder features.
    h_div_w, pixels: an official Infinity h/w template and pixel budget
      ('0.06M' | '0.25M' | '0.60M' | '1M'); pixels '' keeps the variant's
      own schedule.
    prompts_file: '' or a UTF-8 file of one prompt a line (blank lines
      skipped) that replaces `prompts` (Infinity only).
    samples_per_prompt: images per label / prompt (`num_samples` 0).

  Returns:
    A locked ConfigDict; values may still be overridden, keys not added.

  Raises:
    ValueError: a prompts file that is missing, unreadable, not UTF-8 or
      empty, or one given to a VAR model (names `prompts_file`, the path).
  """
  style = model_config_lib.get_variant(variant).style
  if prompts_file:
    if style != "infinity":
      raise ValueError(f"{PROMPTS_FILE_FIELD}: {variant} is class-"
                       "conditional (sampling.labels), it reads no prompts; "
                       f"got {prompts_file!r}")
    # Read now: the captions land in config.sampling.prompts, so the
    # resolved config (config.json) records what was generated.
    prompts = conditions_lib.read_prompts_file(prompts_file,
                                               field=PROMPTS_FILE_FIELD)
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  # Row of the one variant table (toprovar_jax/models/config.py VARIANTS).
  config.model.variant = variant
  # Transformer compute dtype: 'float32' (parity) or 'bfloat16'.
  config.model.dtype = dtype
  if style == "infinity":
    # Official h/w template and pixel budget (models.config.at_resolution);
    # pixels '' = the variant's own schedule.
    config.model.h_div_w = float(h_div_w)
    config.model.pixels = pixels

  config.sampling = ml_collections.ConfigDict()
  # Keep the k largest logits (0 = off, 1 = greedy; ≥ 2 is a no-op on bits).
  config.sampling.top_k = top_k
  # Nucleus threshold (0 = off).
  config.sampling.top_p = top_p
  # Guidance: VAR ramp cfg·s/(S-1); Infinity constant cfg (SPEC §2).
  config.sampling.cfg_scale = cfg_scale
  # Infinity logit temperature τ (VAR ignores it).
  config.sampling.tau = tau
  # PRNG seed of the first batch; batch j uses seed + j.
  config.sampling.seed = 0
  # Samples per generate call (static: one compile per batch size); 0 = all
  # of the run's images in one call (sampling.runner.images_per_call).
  config.sampling.batch_size = batch_size
  # Images in all; 0 = samples_per_prompt per label (VAR) or prompt
  # (Infinity), counted when the conditions are made (pipeline), so an
  # override of sampling.prompts changes the count; > 0: they cycle.
  config.sampling.num_samples = 0
  # Images per label / prompt when num_samples is 0.
  config.sampling.samples_per_prompt = samples_per_prompt
  # Attention implementation: 'xla' | 'cudnn' | 'pallas' | 'auto'.
  config.sampling.attn_impl = "xla"
  # Unroll the runs of layers that see at most this many tokens per row
  # (0 = scan all). GPU: faster small scales, longer compile (BENCHMARKS.md:
  # Infinity-2B at 256: dense 0.291 -> 0.277 s, compile 25 -> 78 s; paper
  # plan 0.159 -> 0.138 s, compile 46 -> 99 s).
  config.sampling.unroll_tokens = 0
  # KV-cache reads (ExecutionConfig.kv_read, same numbers): 'slice' copies a
  # layer's cache prefix every scale, 'buffer' attends over the whole cache
  # with a valid length (no copy; the emoji model's main job on 2 CPU cores:
  # 44 % less CPU time to generate, BENCHMARKS.md).
  config.sampling.kv_read = "slice"
  # Static padded text length T; longer prompts are truncated (SPEC §2, §11).
  config.sampling.text_len = text_len if style == "infinity" else 0
  # ImageNet class ids, one image each (VAR; ignored by Infinity).
  config.sampling.labels = tuple(labels)
  # Prompts, one image each (Infinity; ignored by VAR).
  config.sampling.prompts = tuple(prompts)
  if style == "infinity":
    # Flan-T5 folder of the prompt features; '' = placeholder features
    # (reported as such in results.json).
    config.sampling.t5_dir = t5_dir

  config.sparsity = ml_collections.ConfigDict()
  # 'dense' | 'fastvar' | a plan shipped under toprovar_jax/sparsity/plans/ |
  # a plan JSON path.
  config.sparsity.plan = plan

  config.ckpt = ml_collections.ConfigDict()
  # Orbax dir of the transformer params; '' = random init (logged, reported).
  config.ckpt.transformer = _join(ckpt_dir, "transformer")
  # Orbax dir of the tokenizer variables; '' = random init.
  config.ckpt.tokenizer = _join(ckpt_dir, "tokenizer")

  # Device mesh as (axis, size) pairs, -1 = all the rest (SPEC §10): 'data'
  # splits rows, an optional 'model' axis heads and FFN (toprovar_jax.sharding).
  config.mesh = (("data", -1),)
  # Seed of the random parameter init used when a checkpoint path is ''.
  config.seed = 0

  config.lock()
  return config


def _join(ckpt_dir: str, name: str) -> str:
  return os.path.join(ckpt_dir, name) if ckpt_dir else ""


def model_style(variant: str) -> str:
  """'var' or 'infinity' for a variant name (raises on unknown names)."""
  return model_config_lib.get_variant(variant).style


def sampling_defaults(variant: str) -> dict:
  """EMOJI_SAMPLING for the emoji model, else VAR_SAMPLING or
  INFINITY_SAMPLING by the variant's style."""
  if variant == "emoji":
    return dict(EMOJI_SAMPLING)
  return dict(VAR_SAMPLING if model_style(variant) == "var"
              else INFINITY_SAMPLING)


def dtype_name(bf16: bool) -> str:
  return "bfloat16" if bf16 else "float32"


def size_config(variant: str, arg: Optional[str], *, batch_size: int,
                **sampling_overrides: Any) -> ml_collections.ConfigDict:
  """The config of one model size: the shared `:plan,batch_size,ckpt_dir,bf16`
  arguments (Infinity also `t5_dir`, `h_div_w`, `pixels`, `prompts_file`)
  plus the style's sampling defaults (VAR_SAMPLING / INFINITY_SAMPLING)
  with per-size overrides."""
  infinity = model_style(variant) == "infinity"
  text_args = (dict(t5_dir="", h_div_w=1.0, pixels="", prompts_file="")
               if infinity else {})
  parsed = parse_arg(arg, plan="dense", batch_size=batch_size, ckpt_dir="",
                     bf16=False, **text_args)
  sampling = dict(sampling_defaults(variant), **sampling_overrides)
  extra = ({"text_len": INFINITY_TEXT_LEN,
            **{k: parsed[k] for k in text_args}} if infinity else {})
  return get_base_config(
      variant=variant, batch_size=parsed.batch_size, plan=parsed.plan,
      ckpt_dir=parsed.ckpt_dir, dtype=dtype_name(parsed.bf16), **extra,
      **sampling)
