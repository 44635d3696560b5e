"""From a config to the library's objects: the config boundary.

`experiments/*.py` hand the ConfigDict to this module, which turns it into
the frozen, hashable objects the library uses (STYLE.md §8.1, §9.13). Nothing
past this module sees a ConfigDict, and nothing here parses flags, prints or
writes files.

  plan_specs              config.sparsity.plan + .compare -> plan specs
  model_from_config       config.model -> the variant at its resolution
  samplers_from_config    ConfigDict -> one Sampler per plan (validated)
  generator_from_spec     one plan spec -> a Sampler, or a per-image
                          generator for 'skipvar' / 'adaptive:PATH'
  generators_from_config  generator_from_spec for every plan spec
  num_samples_from_config the run's image count (follows the prompts)
  conditions_from_config  labels / prompts -> Conditions (validated)
  params_from_config      config.ckpt -> weights (`weights.loading`)
  mesh_from_config        config.mesh -> the run's device mesh (`sharding`)

What happens next lives in its own module: the generate loop
(`sampling.runner`), the report (`report`), the conditions and text
features (`sampling.conditions`, `text.features`).

Plans. `config.sparsity.plan` is the reference plan; an optional
`config.sparsity.compare` (comma-separated plan specs) adds plans that run
with the same seeds and conditions, each compared with the reference (PSNR,
mean absolute pixel difference) and with dense (analytic FLOPs).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Tuple

import jax

from toprovar_jax import sharding
from toprovar_jax.models import config as config_lib
from toprovar_jax.sampling import conditions as conditions_lib
from toprovar_jax.sampling import policies
from toprovar_jax.sampling import runner
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.sparsity import adaptive
from toprovar_jax.sparsity import classifier
from toprovar_jax.sparsity import named
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.weights import loading

_DTYPES = ("float32", "bfloat16")
_ATTN_IMPLS = ("xla", "cudnn", "pallas", "auto")


def _fail(field: str, message: str):
  raise conditions_lib.field_error(field, message)


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
  if s.batch_size < 0:
    _fail("sampling.batch_size", f"must be >= 0 (0 = all images in one "
          f"batch), got {s.batch_size}")
  if s.num_samples < 0:
    _fail("sampling.num_samples", "must be >= 0 (0 = samples_per_prompt "
          f"per condition), got {s.num_samples}")
  per = s.samples_per_prompt
  if per < 1:
    _fail("sampling.samples_per_prompt", f"must be >= 1, got {per}")
  if per != 1 and s.num_samples:
    # Both would set the count; refusing beats silently ignoring one.
    _fail("sampling.samples_per_prompt", f"is {per}, but sampling."
          f"num_samples = {s.num_samples} sets the count; set one of them")
  if not math.isfinite(s.cfg_scale):
    _fail("sampling.cfg_scale", f"must be finite, got {s.cfg_scale}")
  if model.style == "infinity":
    if not (math.isfinite(s.tau) and s.tau > 0):
      _fail("sampling.tau", f"must be a finite number > 0, got {s.tau}")
    if not 1 <= s.text_len <= model.text_maxlen:
      _fail("sampling.text_len", f"must be in [1, {model.text_maxlen}] for "
            f"{model.name} (its cfg_uncond rows), got {s.text_len}")


def model_from_config(config) -> config_lib.TransformerConfig:
  """The variant of `config.model.variant`, at `config.model.h_div_w` /
  `config.model.pixels` when pixels is set (Infinity; `at_resolution`).

  Raises:
    ValueError: unknown variant, ratio or budget (names the field).
  """
  model = config_lib.get_variant(config.model.variant)
  pixels = config.model.get("pixels", "")
  if pixels:
    model = config_lib.at_resolution(model, config.model.get("h_div_w", 1.0),
                                     pixels)
  return model


def models_from_config(config) -> Tuple[config_lib.TransformerConfig, Any]:
  """(transformer, tokenizer) configs: the variant table's row, or those of
  a reference json when `config.model.reference` names one
  (`configs/reference.py`: a model of any depth from its hyper-parameters).
  """
  reference = config.model.get("reference", "")
  if not reference:
    model = model_from_config(config)
    return model, config_lib.get_tokenizer(model.name)
  import json  # pylint: disable=import-outside-toplevel
  from toprovar_jax import parity  # pylint: disable=import-outside-toplevel
  try:
    with open(reference) as f:
      meta = json.load(f)
    style = "infinity" if "model_kwargs" in meta["hyperparameters"] else "var"
    return (parity.infinity_configs(meta) if style == "infinity"
            else parity.var_configs(meta))
  except (OSError, ValueError, KeyError, TypeError) as e:
    _fail("model.reference", f"{reference}: not a reference json "
          f"({type(e).__name__}: {e})")


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


def _check_names(specs, names) -> None:
  """Plans whose file-name slugs collide are refused (named)."""
  slugs = [runner.plan_slug(n) for n in names]
  for i, slug in enumerate(slugs):
    if slug in slugs[:i]:
      _fail("sparsity.compare", f"plans {specs[slugs.index(slug)]!r} and "
            f"{specs[i]!r} are both named {slug!r}; their outputs would "
            "collide")


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
  base = _base_sampler(config)
  model = base.model
  specs = plan_specs(config)
  plans = [named.load_plan(specs[0], model)]
  for i, spec in enumerate(specs[1:]):
    try:
      plans.append(named.load_plan(spec, model))
    except plan_lib.PlanError as e:
      raise plan_lib.PlanError(
          f"config.sparsity.compare[{i}] = {spec!r}: {e}") from None
  _check_names(specs, [p.name for p in plans])
  return tuple(dataclasses.replace(base, plan=plan) for plan in plans)


def _base_sampler(config) -> sampler_lib.Sampler:
  """The config's Sampler without a plan (dense), sampling validated."""
  model, tokenizer = models_from_config(config)
  _validate_sampling(config, model)
  s = config.sampling
  # The config's sampling group also holds the execution settings a launch
  # may choose (the rest keep ExecutionConfig's defaults).
  return sampler_lib.Sampler(
      model=model, tokenizer=tokenizer,
      sampling=sampler_lib.SamplingConfig(
          top_k=int(s.top_k), top_p=float(s.top_p), dtype=config.model.dtype),
      execution=sampler_lib.ExecutionConfig(
          attn_impl=s.attn_impl, unroll_tokens=int(s.unroll_tokens),
          kv_read=str(s.kv_read)))


def shipped_decision(model_name: str, method: str):
  """Where 'skipvar' / 'adaptive' find the model's trained decision:
  toprovar_jax/sparsity/decisions/<model>_<method>.json.

  Raises:
    PlanError: none is shipped for this model (says how to make one).
  """
  path = classifier.decisions_dir() / f"{model_name}_{method}.json"
  if not path.is_file():
    trainer = ("train_skipvar" if method == "skipvar"
               else "calibrate_adaptive")
    raise plan_lib.PlanError(
        f"{method!r} chooses its plan per image with a trained decision, "
        f"and none ships for {model_name} ({path.name} under "
        f"{path.parent}); make one with experiments/{trainer}.py and pass "
        f"'{method}:PATH'", field="plan")
  return path


def generator_from_spec(config, spec: str):
  """What generates with one plan spec: a Sampler for a static spec
  ('dense', 'fastvar', a named plan, a JSON path); a
  `sampling.branching.Branching` for 'skipvar' (the model's shipped
  classifier, `shipped_decision`), 'skipvar:PATH' (a classifier JSON),
  'adaptive' (the model's shipped spec) or 'adaptive:PATH'
  (`sparsity.adaptive`). Both go to `runner.generate_images`.

  Raises:
    PlanError / ValueError: a bad spec, file or plan (one line, named).
  """
  base = _base_sampler(config)
  if spec == "skipvar" or spec.startswith("skipvar:"):
    path = spec[len("skipvar:"):] or shipped_decision(base.model.name,
                                                      "skipvar")
    return policies.skipvar_branching(base, classifier.load_spec(path))
  if spec == "adaptive" or spec.startswith("adaptive:"):
    path = spec[len("adaptive:"):] or shipped_decision(base.model.name,
                                                       "adaptive")
    return policies.adaptive_branching(base,
                                       adaptive.load_spec(path, base.model))
  return dataclasses.replace(base, plan=named.load_plan(spec, base.model))


def generators_from_config(config) -> Tuple[Any, ...]:
  """`generator_from_spec` for every spec of `plan_specs(config)`
  (reference first); the names must differ (their outputs would collide)."""
  specs = plan_specs(config)
  gens = []
  for i, spec in enumerate(specs):
    try:
      gens.append(generator_from_spec(config, spec))
    except ValueError as e:
      if i == 0:
        raise
      raise type(e)(f"config.sparsity.compare[{i - 1}] = {spec!r}: {e}"
                    ) from None
  _check_names(specs, [runner.run_name(g) for g in gens])
  return tuple(gens)


def sampler_from_config(config) -> sampler_lib.Sampler:
  """The Sampler of the reference plan, `config.sparsity.plan`.

  Compared plans are validated too (a bad one fails here, before any work);
  see `samplers_from_config`.
  """
  return samplers_from_config(config)[0]


def num_samples_from_config(config, model: config_lib.TransformerConfig
                            ) -> int:
  """Images in the run: `sampling.num_samples`, or when it is 0
  `samples_per_prompt` per label (VAR) or prompt (Infinity) the config
  holds now, so `--config.sampling.prompts=...` (or a config's
  `prompts_file`) sets the count too."""
  s = config.sampling
  conditions = s.labels if model.style == "var" else s.prompts
  return s.num_samples or len(conditions) * s.samples_per_prompt


def conditions_from_config(config, sampler: sampler_lib.Sampler
                           ) -> conditions_lib.Conditions:
  """`conditions.make_conditions` from `config.sampling`, with
  `num_samples_from_config` images (the conditions cycle to fill them)."""
  s = config.sampling
  return conditions_lib.make_conditions(
      sampler.model, labels=tuple(s.labels), prompts=tuple(s.prompts),
      num_samples=num_samples_from_config(config, sampler.model),
      text_len=s.text_len, t5_dir=s.get("t5_dir", ""))


def conditions_for_prompts(config, sampler, prompts, num_samples: int = 0
                           ) -> conditions_lib.Conditions:
  """`conditions.make_conditions` of these prompts (or VAR class labels,
  one per line as text) with the config's text length; num_samples 0 = one
  per prompt, else the prompts cycle."""
  model = sampler.model
  prompts = tuple(str(p) for p in prompts)
  if model.style == "var":
    return conditions_lib.make_conditions(
        model, labels=tuple(int(p) for p in prompts),
        num_samples=num_samples)
  return conditions_lib.make_conditions(
      model, prompts=prompts, num_samples=num_samples,
      text_len=config.sampling.text_len)


def dense_run_from_prompts_file(config, path: str, num_samples: int = 0):
  """(dense Sampler, Conditions of the prompts in `path` (one a line),
  params, vae_params, ParamsSource, prompts): the inputs of a training run
  over prompts (`experiments/train_skipvar.py`, `calibrate_adaptive.py`)."""
  base = generator_from_spec(config, "dense")
  prompts = list(conditions_lib.read_prompts_file(path, field="--prompts"))
  conditions = conditions_for_prompts(config, base, prompts, num_samples)
  params, vae, source = params_from_config(config,
                                           jax.random.key(config.seed))
  return base, conditions, params, vae, source, prompts


def params_from_config(config, rng: jax.Array
                       ) -> Tuple[Any, Any, loading.ParamsSource]:
  """`weights.loading.load_or_init` of `config.ckpt` for `config.model`.

  Returns:
    (params, vae_params, source); see `loading.load_or_init`.
  """
  model, tokenizer = models_from_config(config)
  return loading.load_or_init(
      model, tokenizer,
      transformer_path=config.ckpt.transformer,
      tokenizer_path=config.ckpt.tokenizer, rng=rng)


def mesh_from_config(config) -> jax.sharding.Mesh:
  """`sharding.make_mesh` of `config.mesh` ((axis, size) pairs; default
  one `data` axis over every device), checked against the model's heads
  and FFN width when it has a `model` axis.

  Raises:
    ValueError: a bad mesh, naming `config.mesh`.
  """
  mesh = sharding.make_mesh(tuple(config.mesh), field="mesh")
  sharding.check_model(mesh, models_from_config(config)[0])
  return mesh
