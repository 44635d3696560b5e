"""Latency / memory / compile-time measurement of sparsity plans (library).

Random weights (latency does not depend on values; no checkpoint can be
downloaded here), bf16 transformer blocks with an fp32 stem, CFG batch, the
whole scale loop as one jitted program. Timing: median of `runs` calls after a
warm-up call, each closed by `block_until_ready` (device-synchronised).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax import flops as flops_lib
from toprovar_jax.bench import profile
from toprovar_jax.models import config as config_lib
from toprovar_jax.models import transformer
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sampling import sampler as sampler_lib


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchSetup:
  variant: str
  batch: int = 1
  text_len: int = 512
  text_tokens: int = 30
  dtype: str = "bfloat16"
  attn_impl: str = "cudnn"
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


def conditioning(cfg, setup: BenchSetup, seed: int = 1) -> Dict[str, Any]:
  key = jax.random.key(seed)
  if cfg.style == "var":
    return dict(labels=jax.random.randint(key, (setup.batch,), 0,
                                          cfg.num_classes))
  text = jax.random.normal(key, (setup.batch, setup.text_len,
                                 cfg.text_dim)) * 0.3
  mask = jnp.arange(setup.text_len)[None] < setup.text_tokens
  return dict(text=text, text_mask=jnp.broadcast_to(
      mask, (setup.batch, setup.text_len)))


def _time(fn, runs: int) -> List[float]:
  out = []
  for _ in range(runs):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    out.append(time.perf_counter() - t)
  return out


def bench_plan(cfg, tok, params, vparams, vae_model, cond, setup: BenchSetup,
               plan: plan_lib.SparsityPlan, *, runs: int = 7,
               entropy_impl: Optional[str] = None, layer_unroll: int = 1,
               kv_read: str = "slice", unroll_tokens: int = 0,
               layer_loop: str = "scan",
               profile_dir: Optional[str] = None,
               hlo_path: Optional[str] = None) -> Dict[str, Any]:
  """Times one plan: transformer only, and transformer + decode.

  With `hlo_path`, also writes the optimised HLO of the generation program
  there, gzip-compressed (to read what XLA made of a scale's layer loop).
  """
  smp = sampler(cfg, tok, setup, plan, entropy_impl=entropy_impl,
                 layer_unroll=layer_unroll, kv_read=kv_read,
                 unroll_tokens=unroll_tokens, layer_loop=layer_loop)
  args = generate_args(cfg, params, vparams, cond)

  _, compiled, lower_s, compile_s = lower_and_compile(smp._generate, *args)
  compile_s += lower_s  # what a user waits for before the first call
  hlo_text = compiled.as_text() if hlo_path or profile_dir else None
  if hlo_path:
    import gzip
    with gzip.open(hlo_path, "wt") as f:
      f.write(hlo_text)
  run = lambda: compiled(*args)
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
      "entropy_impl": entropy_impl,
      "layer_unroll": layer_unroll,
      "kv_read": kv_read,
      "unroll_tokens": unroll_tokens,
      "layer_loop": layer_loop,
      "compile_s": compile_s,
      "transformer_s": statistics.median(times),
      "transformer_runs_s": times,
      "with_decode_s": statistics.median(times_dec),
      "decode_only_s": statistics.median(times_dec_only),
      "tflop": fl.total / 1e12,
      "flop_speedup": dense_fl.total / fl.total,
      "finite": bool(np.all(np.isfinite(np.asarray(out.latent, np.float32)))),
  }


def generate_args(cfg, params, vparams, cond):
  """Positional arguments of `Sampler._generate` for a benchmark call: seed
  0, the official guidance (Infinity 3, VAR 1.5) and τ 0.5, no forcing."""
  g = jnp.float32(3.0 if cfg.style == "infinity" else 1.5)
  return (params, vparams if cfg.style == "var" else None, jax.random.key(0),
          g, jnp.float32(0.5), cond.get("labels"), cond.get("text"),
          cond.get("text_mask"), None)


def sampler(cfg, tok, setup: BenchSetup, plan, **sampling):
  return sampler_lib.Sampler(
      model=cfg, tokenizer=tok, plan=plan,
      sampling=sampler_lib.SamplingConfig(
          top_k=setup.top_k, top_p=setup.top_p, dtype=setup.dtype,
          attn_impl=setup.attn_impl, **sampling))


def result_key(r: Dict[str, Any]) -> str:
  """'plan@entropy_impl#uN', plus '%kv_read' when not the default "slice"
  and '^N' when runs are unrolled (the spelling `experiments/benchmark.py
  --plans` takes)."""
  key = f"{r['plan']}@{r['entropy_impl']}#u{r['layer_unroll']}"
  kv_read = r.get("kv_read", "slice")
  key = key if kv_read == "slice" else f"{key}%{kv_read}"
  key = f"{key}^{r['unroll_tokens']}" if r.get("unroll_tokens") else key
  return f"{key}+while" if r.get("layer_loop") == "while" else key


def peak_memory_gib() -> Optional[float]:
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**30


def lower_and_compile(fn, *args):
  """(lowered, compiled, lower seconds, compile seconds) of jit(fn)(*args);
  args may be ShapeDtypeStructs."""
  t0 = time.perf_counter()
  lowered = jax.jit(fn).lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  return lowered, compiled, t1 - t0, time.perf_counter() - t1
