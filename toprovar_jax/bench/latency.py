"""Latency of a plan's generation program (GPU benchmark, library side).

Random weights (latency does not depend on values; no checkpoint can be
downloaded here), bf16 transformer blocks with an fp32 stem, CFG batch, the
whole scale loop as one jitted program, built and compiled by the generate
runner (`sampling.runner.batch_inputs` / `compile_generate`, the public
`Sampler.generate`). Timing: median of `runs` calls after a warm-up call,
each closed by `block_until_ready` (device-synchronised).

What runs is named by plain settings: a plan (`resolve_plan`: 'dense',
'fastvar', a named plan, a JSON path or a SkipVAR action
'skipvar_skipK[_uncondS]', optionally with its entropy scorer swapped for
another) and an `ExecutionConfig` (`execution_grid` builds every
combination of listed values). `result_key` spells a row as
"plan key=value ..." with the settings that differ from the defaults.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
import itertools
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax import flops as flops_lib
from toprovar_jax import sharding
from toprovar_jax.bench import profile
from toprovar_jax.models import config as config_lib
from toprovar_jax.models import transformer
from toprovar_jax.sampling import conditions as conditions_lib
from toprovar_jax.sampling import runner
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.sparsity import baselines
from toprovar_jax.sparsity import named
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import validation


# XLA flags of the GPU benchmark (set when the user chose none). Measured on
# the H200 (BENCHMARKS.md runs 4-5): command buffers for WHILE / CONDITIONAL
# cut the layer loops' host round trips (dense 0.415 -> 0.386 s, paper plan
# 0.377 -> 0.294 s); cuBLAS rather than Triton GEMMs take the bias in the
# epilogue (dense 0.297 -> 0.291 s).
GPU_XLA_FLAGS = ("--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,"
                  "CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL "
                  "--xla_gpu_graph_min_graph_size=1 "
                  "--xla_gpu_enable_triton_gemm=false")

# The benchmark's guidance: the official defaults (Infinity 3, VAR 1.5), τ 0.5.
_CFG_SCALE = {"infinity": 3.0, "var": 1.5}
_TAU = 0.5
_EXECUTION_FIELDS = tuple(
    f.name for f in dataclasses.fields(sampler_lib.ExecutionConfig))
_DEFAULT_EXECUTION = sampler_lib.ExecutionConfig()


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchSetup:
  """The model and sampling rules of a benchmark (the same for every row).

  Attributes:
    variant: model variant.
    batch: images per call (CFG doubles the rows).
    text_len: static padded text length (Infinity).
    text_tokens: real tokens per prompt (the rest is padding).
    dtype: compute dtype of the transformer blocks and the tokenizer.
    top_k, top_p: sampling rules (the official Infinity defaults).
  """
  variant: str
  batch: int = 1
  text_len: int = 512
  text_tokens: int = 30
  dtype: str = "bfloat16"
  top_k: int = 900
  top_p: float = 0.97


def _cast_blocks(params, dtype):
  """Blocks in the compute dtype (weights read every scale); stem in fp32."""
  return {"stem": params["stem"],
          "blocks": jax.tree.map(lambda t: t.astype(dtype), params["blocks"])}


def init_model(setup: BenchSetup, seed: int = 0, abstract: bool = False):
  """(cfg, tokenizer cfg, params, tokenizer variables, tokenizer module).

  With `abstract`, params and variables are ShapeDtypeStructs (nothing is
  allocated: enough to lower and compile, e.g. for compile-time studies).
  """
  init = jax.eval_shape if abstract else (lambda f, k: jax.jit(f)(k))
  cfg = config_lib.get_variant(setup.variant)
  tok = config_lib.get_tokenizer(setup.variant)
  key = jax.random.key(seed)
  params = init(lambda k: _cast_blocks(transformer.init_params(cfg, k),
                                       jnp.dtype(setup.dtype)), key)
  if cfg.style == "var":
    from toprovar_jax.models import vqvae
    hf = cfg.schedule[-1][0] * 16
    model = vqvae.VQVAE(tok, dtype=jnp.dtype(setup.dtype))
    vparams = init(lambda k: model.init(k, jnp.zeros((1, hf, hf, 3))), key)
  else:
    from toprovar_jax.models import bsq_vae
    hf, wf = config_lib.vae_grid(cfg)
    model = bsq_vae.BSQVAE(tok)
    s = tok.stride
    vparams = init(lambda k: jax.tree.map(
        lambda t: t.astype(jnp.dtype(setup.dtype)),
        model.init(k, jnp.zeros((1, hf * s, wf * s, 3)))), key)
  return cfg, tok, params, vparams, model


def conditioning(cfg, setup: BenchSetup,
                 seed: int = 1) -> conditions_lib.Conditions:
  """Random labels (VAR) or random text features with `text_tokens` real
  tokens per row (Infinity), one per image of the batch (host numpy)."""
  rng = np.random.default_rng(seed)
  if cfg.style == "var":
    return conditions_lib.Conditions(labels=rng.integers(
        0, cfg.num_classes, (setup.batch,)).astype(np.int32))
  text = rng.normal(0.0, 0.3, (setup.batch, setup.text_len,
                               cfg.text_dim)).astype(np.float32)
  mask = np.broadcast_to(np.arange(setup.text_len)[None] < setup.text_tokens,
                         (setup.batch, setup.text_len))
  return conditions_lib.Conditions(text=text, text_mask=np.array(mask))


def resolve_plan(name: str, cfg, *, scorer: str = "") -> plan_lib.SparsityPlan:
  """The validated plan a benchmark names.

  Args:
    name: 'dense', 'fastvar', a named plan, a JSON path
      (`sparsity.named.load_plan`) or a SkipVAR action
      'skipvar_skipK[_uncondS]' (`baselines.skipvar_action_plan`).
    cfg: the model.
    scorer: '' keeps the plan; else every scale scored by 'entropy' is
      scored by this scorer instead and loses its probe (e.g. 'frequency':
      the free FastVAR scorer, for the "entropy costs <= 3 %" check); the
      plan is renamed 'NAME~SCORER' (a plan without entropy scales is
      returned as it is).

  Raises:
    PlanError: an unknown or invalid plan (named).
  """
  plan = baselines.skipvar_action_plan(name, cfg) or named.load_plan(name, cfg)
  if not scorer or all(s.scorer != "entropy" for s in plan.scales):
    return plan  # e.g. dense: nothing to swap, the name stays
  scales = tuple(dataclasses.replace(s, scorer=scorer, probe_layer=None)
                 if s.scorer == "entropy" else s for s in plan.scales)
  return validation.validate_plan(
      dataclasses.replace(plan, name=f"{plan.name}~{scorer}", scales=scales),
      cfg)


def _parse(field: str, value: str):
  if field == "entropy_impl":
    return None if value in ("", "none", "None") else value
  if field in ("unroll_tokens", "layer_unroll"):
    try:
      return int(value)
    except ValueError:
      raise ValueError(f"--{field}: {value!r} is not an integer") from None
  return value


def execution_grid(values: Mapping[str, Sequence[str]]
                   ) -> Tuple[sampler_lib.ExecutionConfig, ...]:
  """Every combination of the listed execution settings.

  Args:
    values: ExecutionConfig field -> its values as strings (a field left
      out keeps its default; entropy_impl '' or 'none' is None).

  Returns:
    The ExecutionConfigs of the product, in the order of the fields and of
    the values.

  Raises:
    ValueError: an unknown field or a bad value (named).
  """
  for field in values:
    if field not in _EXECUTION_FIELDS:
      raise ValueError(f"unknown execution setting {field!r}; known: "
                       f"{list(_EXECUTION_FIELDS)}")
  lists = [[_parse(f, v) for v in values[f]] if f in values and values[f]
           else [getattr(_DEFAULT_EXECUTION, f)] for f in _EXECUTION_FIELDS]
  return tuple(sampler_lib.ExecutionConfig(**dict(zip(_EXECUTION_FIELDS, c)))
               for c in itertools.product(*lists))


def make_sampler(cfg, tok, setup: BenchSetup, plan: plan_lib.SparsityPlan,
                 execution: sampler_lib.ExecutionConfig
                 ) -> sampler_lib.Sampler:
  return sampler_lib.Sampler(
      model=cfg, tokenizer=tok, plan=plan, execution=execution,
      sampling=sampler_lib.SamplingConfig(top_k=setup.top_k,
                                          top_p=setup.top_p,
                                          dtype=setup.dtype))


def compile_program(smp: sampler_lib.Sampler, params, vparams,
                    cond: conditions_lib.Conditions, *, seed: int = 0,
                    mesh: Optional[jax.sharding.Mesh] = None,
                    options: Optional[Dict[str, Any]] = None):
  """(compiled program, its call arguments) of one batch, through the
  runner: images 0..B-1 of `seed`, the benchmark's guidance. XLA's default
  compiler options (what is timed is the program XLA makes by default).
  With a `mesh`, the sharded program (`toprovar_jax.sharding`; the batch
  must be a multiple of its data axis), its arguments placed on the mesh.
  `options`: XLA compiler options (tests: `runner.compiler_options()`)."""
  keys, arrays = runner.batch_inputs(smp, cond, range(cond.num_samples),
                                     seed=seed, mesh=mesh)
  vae = vparams if smp.model.style == "var" else None
  guidance = (jnp.float32(_CFG_SCALE[smp.model.style]), jnp.float32(_TAU))
  if mesh is not None:
    params = sharding.put_params(params, mesh)
    vae = None if vae is None else sharding.put_replicated(vae, mesh)
    guidance = sharding.put_replicated(guidance, mesh)
  compiled = runner.compile_generate(smp, params, vae, keys, arrays,
                                     options=options, mesh=mesh)
  args = (params, vae, keys) + tuple(guidance)
  return compiled, args, arrays


def execution_fields(execution: sampler_lib.ExecutionConfig
                     ) -> Dict[str, Any]:
  """The row fields of an execution config (all of them, JSON-ready)."""
  return dataclasses.asdict(execution)


def _time(fn, runs: int) -> List[float]:
  out = []
  for _ in range(runs):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    out.append(time.perf_counter() - t)
  return out


def bench_plan(cfg, tok, params, vparams, vae_model,
               cond: conditions_lib.Conditions, setup: BenchSetup,
               plan: plan_lib.SparsityPlan, *,
               execution: sampler_lib.ExecutionConfig, runs: int = 7,
               profile_dir: Optional[str] = None,
               hlo_path: Optional[str] = None,
               mesh: Optional[jax.sharding.Mesh] = None) -> Dict[str, Any]:
  """Times one plan with one execution config: transformer only, and
  transformer + decode.

  With `hlo_path`, also writes the optimised HLO of the generation program
  there, gzip-compressed (to read what XLA made of a scale's layer loop).
  With a `mesh`, the sharded program (`compile_program`).
  """
  smp = make_sampler(cfg, tok, setup, plan, execution)
  compiled, args, arrays = compile_program(smp, params, vparams, cond,
                                           mesh=mesh)
  if mesh is not None:  # the decoder reads the program's sharded latent
    vparams = sharding.put_replicated(vparams, mesh)
  # What a user waits for before the first call: lowering and compiling.
  compile_s = compiled.lower_s + compiled.compile_s
  hlo_text = compiled.fn.as_text() if hlo_path or profile_dir else None
  if hlo_path:
    import gzip  # pylint: disable=g-import-not-at-top
    with gzip.open(hlo_path, "wt") as f:
      f.write(hlo_text)
  run = lambda: compiled.fn(*args, **arrays)
  decode = jax.jit(lambda vp, z: vae_model.apply(vp, z.astype(
      jnp.dtype(setup.dtype)), method=type(vae_model).decode))
  out = run()
  jax.block_until_ready(decode(vparams, out.latent))  # warm-up both
  times = _time(run, runs)
  times_dec = _time(lambda: decode(vparams, run().latent), runs)
  times_dec_only = _time(lambda: decode(vparams, out.latent), runs)
  fl = flops_lib.plan_flops(plan, cfg)
  dense_fl = flops_lib.dense_flops(cfg)
  prof = (profile.profile_summary(run, profile_dir, hlo_text=hlo_text)
          if profile_dir else None)
  return {
      "profile": prof,
      "plan": plan.name,
      "execution": execution_fields(execution),
      "compile_s": compile_s,
      "transformer_s": statistics.median(times),
      "transformer_runs_s": times,
      "with_decode_s": statistics.median(times_dec),
      "decode_only_s": statistics.median(times_dec_only),
      "tflop": fl.total / 1e12,
      "flop_speedup": dense_fl.total / fl.total,
      "finite": bool(np.all(np.isfinite(np.asarray(out.latent, np.float32)))),
  }


def result_key(r: Dict[str, Any]) -> str:
  """'PLAN' plus ' FIELD=VALUE' for every execution setting of the row that
  is not the ExecutionConfig default, e.g. 'dense kv_read=buffer
  unroll_tokens=1024' (the flags `experiments/benchmark.py` takes)."""
  default = execution_fields(_DEFAULT_EXECUTION)
  ex = r.get("execution", {})
  diff = [f"{k}={ex[k]}" for k in _EXECUTION_FIELDS
          if k in ex and ex[k] != default[k]]
  return " ".join([r["plan"], *diff])


def peak_memory_gib() -> Optional[float]:
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**30
