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
from toprovar_jax.models import config as config_lib
from toprovar_jax.models import transformer
from toprovar_jax.sampling import plan as plan_lib
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


def init_model(setup: BenchSetup, seed: int = 0):
  cfg = config_lib.get_variant(setup.variant)
  tok = config_lib.get_tokenizer(setup.variant)
  key = jax.random.key(seed)
  params = jax.jit(lambda k: _cast_blocks(transformer.init_params(cfg, k),
                                          jnp.dtype(setup.dtype)))(key)
  if cfg.style == "var":
    from toprovar_jax.models import vqvae
    hf = cfg.schedule[-1][0] * 16
    model = vqvae.VQVAE(tok, dtype=jnp.dtype(setup.dtype))
    vparams = jax.jit(lambda k: model.init(k, jnp.zeros((1, hf, hf, 3))))(key)
  else:
    from toprovar_jax.models import bsq_vae
    hf, wf = config_lib.vae_grid(cfg)
    model = bsq_vae.BSQVAE(tok)
    s = tok.stride
    vparams = jax.jit(lambda k: model.init(
        k, jnp.zeros((1, hf * s, wf * s, 3))))(key)
    vparams = jax.tree.map(lambda t: t.astype(jnp.dtype(setup.dtype)), vparams)
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
               kv_read: str = "slice",
               profile_dir: Optional[str] = None) -> Dict[str, Any]:
  """Times one plan: transformer only, and transformer + decode."""
  smp = sampler_lib.Sampler(
      model=cfg, tokenizer=tok, plan=plan,
      sampling=sampler_lib.SamplingConfig(
          top_k=setup.top_k, top_p=setup.top_p, dtype=setup.dtype,
          attn_impl=setup.attn_impl, entropy_impl=entropy_impl,
          layer_unroll=layer_unroll, kv_read=kv_read))
  rng = jax.random.key(0)
  g = jnp.float32(3.0 if cfg.style == "infinity" else 1.5)
  tau = jnp.float32(0.5)
  args = (params, vparams if cfg.style == "var" else None, rng, g, tau)

  t = time.perf_counter()
  compiled = jax.jit(smp._generate).lower(
      *args, cond.get("labels"), cond.get("text"), cond.get("text_mask"),
      None).compile()
  compile_s = time.perf_counter() - t
  run = lambda: compiled(*args, cond.get("labels"), cond.get("text"),
                         cond.get("text_mask"), None)
  decode = jax.jit(lambda vp, z: vae_model.apply(vp, z.astype(
      jnp.dtype(setup.dtype)), method=type(vae_model).decode))
  out = run()
  jax.block_until_ready(decode(vparams, out.latent))  # warm-up both
  times = _time(run, runs)
  times_dec = _time(lambda: decode(vparams, run().latent), runs)
  times_dec_only = _time(lambda: decode(vparams, out.latent), runs)
  fl = flops_lib.plan_flops(plan, cfg)
  dense_fl = flops_lib.dense_flops(cfg)
  prof = profile_summary(run, profile_dir) if profile_dir else None
  return {
      "profile": prof,
      "plan": plan.name,
      "entropy_impl": entropy_impl,
      "layer_unroll": layer_unroll,
      "kv_read": kv_read,
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
  """'plan@entropy_impl#uN', plus '%kv_read' when not the default "slice"
  (the spelling `experiments/benchmark.py --plans` takes)."""
  key = f"{r['plan']}@{r['entropy_impl']}#u{r['layer_unroll']}"
  kv_read = r.get("kv_read", "slice")
  return key if kv_read == "slice" else f"{key}%{kv_read}"


def peak_memory_gib() -> Optional[float]:
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**30


def profile_summary(fn, logdir: str, top: int = 40) -> Dict[str, Any]:
  """Traces one call of `fn` and aggregates device kernel time by name.

  Returns {"device_busy_ms", "wall_ms", "kernels": [(name, ms, count), ...]}
  so a benchmark can show where time goes without TensorBoard.
  """
  jax.block_until_ready(fn())
  t = time.perf_counter()
  with jax.profiler.trace(logdir):
    jax.block_until_ready(fn())
  wall = time.perf_counter() - t
  import glob
  files = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
  data = jax.profiler.ProfileData.from_file(sorted(files)[-1])
  agg: Dict[str, List[float]] = {}
  busy = 0.0
  layout = [(p.name, [ln.name for ln in p.lines][:12]) for p in data.planes]
  for plane in data.planes:
    if not plane.name.startswith("/device:GPU"):
      continue
    for line in plane.lines:
      # One line per stream; skip the aggregated "XLA Ops"/"XLA Modules" views.
      if "Stream" not in line.name:
        continue
      for ev in line.events:
        ms = ev.duration_ns / 1e6
        busy += ms
        a = agg.setdefault(ev.name, [0.0, 0])
        a[0] += ms
        a[1] += 1
  kernels = sorted(((k, v[0], v[1]) for k, v in agg.items()),
                   key=lambda x: -x[1])[:top]
  return {"device_busy_ms": busy, "wall_ms": wall * 1e3, "kernels": kernels,
          "layout": layout, "gaps": _idle_gaps(data)}


def _idle_gaps(data, top: int = 15) -> Dict[str, Any]:
  """Idle time between consecutive GPU kernels (all streams merged).

  The biggest gaps, with the kernels around them, show where the device waits
  for the host (while-loop predicates, launches) rather than computing.
  """
  evs = []
  for plane in data.planes:
    if plane.name.startswith("/device:GPU"):
      for line in plane.lines:
        if "Stream" in line.name:
          evs.extend((e.start_ns, e.end_ns, e.name) for e in line.events)
  evs.sort()
  gaps, end, prev = [], None, None
  for start, stop, name in evs:
    if end is not None and start > end:
      gaps.append(((start - end) / 1e6, prev, name))
    if end is None or stop > end:
      end, prev = stop, name
  gaps.sort(key=lambda g: -g[0])
  span = (evs[-1][1] - evs[0][0]) / 1e6 if evs else 0.0
  return {"span_ms": span, "idle_ms": sum(g[0] for g in gaps),
          "num_gaps_over_20us": sum(g[0] > 0.02 for g in gaps),
          "largest": gaps[:top]}
