"""Latency / memory / compile-time measurement of sparsity plans (library).

Random weights (latency does not depend on values; no checkpoint can be
downloaded here), bf16 transformer blocks with an fp32 stem, CFG batch, the
whole scale loop as one jitted program. Timing: median of `runs` calls after a
warm-up call, each closed by `block_until_ready` (device-synchronised).
"""

from __future__ import annotations

import collections
import dataclasses
import re
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
  smp = _sampler(cfg, tok, setup, plan, entropy_impl=entropy_impl,
                 layer_unroll=layer_unroll, kv_read=kv_read,
                 unroll_tokens=unroll_tokens, layer_loop=layer_loop)
  args = _generate_args(cfg, params, vparams, cond)

  _, compiled, lower_s, compile_s = _lower_and_compile(smp._generate, *args)
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
  prof = (profile_summary(run, profile_dir, hlo_text=hlo_text)
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


def source_digest() -> str:
  """First 12 hex digits of a SHA-256 over this package's and experiments/'
  Python sources (path and bytes, sorted by path).

  Identifies the code a benchmark ran even where `git rev-parse` cannot (the
  GPU machine's copy of the tree carries a stale .git); `python -c "from
  toprovar_jax import benchmarking; print(benchmarking.source_digest())"` on
  a checkout gives the digest to compare with.
  """
  import hashlib
  import pathlib
  root = pathlib.Path(__file__).resolve().parent.parent
  h = hashlib.sha256()
  for path in sorted([*root.glob("toprovar_jax/**/*.py"),
                      *root.glob("experiments/*.py")]):
    h.update(str(path.relative_to(root)).encode())
    h.update(path.read_bytes())
  return h.hexdigest()[:12]


def _generate_args(cfg, params, vparams, cond):
  """Positional arguments of `Sampler._generate` for a benchmark call: seed
  0, the official guidance (Infinity 3, VAR 1.5) and τ 0.5, no forcing."""
  g = jnp.float32(3.0 if cfg.style == "infinity" else 1.5)
  return (params, vparams if cfg.style == "var" else None, jax.random.key(0),
          g, jnp.float32(0.5), cond.get("labels"), cond.get("text"),
          cond.get("text_mask"), None)


def _sampler(cfg, tok, setup: BenchSetup, plan, **sampling):
  return sampler_lib.Sampler(
      model=cfg, tokenizer=tok, plan=plan,
      sampling=sampler_lib.SamplingConfig(
          top_k=setup.top_k, top_p=setup.top_p, dtype=setup.dtype,
          attn_impl=setup.attn_impl, **sampling))


def compile_plan(cfg, tok, params, vparams, cond, setup: BenchSetup,
                 plan: plan_lib.SparsityPlan, **sampling) -> Dict[str, Any]:
  """Lowers and compiles one plan's generation program, timing both.

  params / vparams / cond may be ShapeDtypeStructs (`init_model(abstract=
  True)`): nothing runs. `sampling` are SamplingConfig fields.
  """
  smp = _sampler(cfg, tok, setup, plan, **sampling)
  _, _, lower_s, compile_s = _lower_and_compile(
      smp._generate, *_generate_args(cfg, params, vparams, cond))
  return {"plan": plan.name, "backend": jax.default_backend(),
          "lower_s": lower_s, "compile_s": compile_s, **sampling}


def _lower_and_compile(fn, *args):
  """(lowered, compiled, lower seconds, compile seconds) of jit(fn)(*args);
  args may be ShapeDtypeStructs."""
  t0 = time.perf_counter()
  lowered = jax.jit(fn).lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  return lowered, compiled, t1 - t0, time.perf_counter() - t1


def compile_block_chain(cfg, layers: int, *, programs: int = 1,
                        tokens: int = 64, rows: int = 2, text_len: int = 64,
                        dtype: str = "bfloat16",
                        attn_impl: str = "xla") -> Dict[str, Any]:
  """Compile time of `layers` unrolled blocks, as one or several programs.

  The blocks (each with its own abstract weights, nothing allocated) run in
  sequence on (rows, tokens, C) with `text_len` text tokens, no KV prefix:
  what `SamplingConfig.unroll_tokens` puts into the generation program for
  one scale. `programs` > 1 splits the chain into that many separately
  lowered and compiled programs (the compile cost of per-scale programs);
  program i runs tokens + i tokens per row, so no two are the same program
  (jax would reuse the executable of an identical one, as it does for the
  same program at the same shapes).

  Returns {"layers", "programs", "lower_s", "compile_s", "dot_generals"}
  (sums over the programs; `dot_generals` counts the matrix products in the
  lowered programs, a check that every block is really there).
  """
  if layers < 1 or programs < 1 or layers % programs:
    raise ValueError(f"layers ({layers}) must be a positive multiple of "
                     f"programs ({programs})")
  dt = jnp.dtype(dtype)
  block = transformer.block_module(cfg, dt)
  x_at = lambda n: jax.ShapeDtypeStruct((rows, n, cfg.width), jnp.float32)
  x = x_at(tokens)
  ada_shape = ((rows, 6, cfg.width) if cfg.shared_aln else (rows, cfg.width))
  ada = jax.ShapeDtypeStruct(ada_shape, jnp.float32)
  ctx = {}
  if cfg.style == "infinity":
    kv = jax.ShapeDtypeStruct((rows, text_len, cfg.num_heads, cfg.head_dim),
                              dt)
    ctx = dict(text_kv=(kv, kv))
  zeros = lambda t: jnp.zeros(t.shape, t.dtype)
  p = jax.eval_shape(lambda: block.init(
      jax.random.key(0), zeros(x), zeros(ada),
      **jax.tree.map(zeros, ctx)))

  def chain(ps, x, ada, ctx):
    for q in ps:
      x, _ = block.apply(q, x, ada, impl=attn_impl, **ctx)
    return x

  per = layers // programs
  lower_s = compile_s = 0.0
  dots = 0
  for i in range(programs):
    lowered, _, lo, co = _lower_and_compile(chain, [p] * per,
                                            x_at(tokens + i), ada, ctx)
    lower_s += lo
    compile_s += co
    dots += lowered.as_text().count("stablehlo.dot_general")
  return {"layers": layers, "programs": programs, "lower_s": lower_s,
          "compile_s": compile_s, "dot_generals": dots}


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


def profile_summary(fn, logdir: str, top: int = 40,
                    hlo_text: Optional[str] = None) -> Dict[str, Any]:
  """Traces one call of `fn` and aggregates device kernel time by name.

  Returns {"device_busy_ms", "wall_ms", "kernels": [(name, ms, count), ...],
  "gaps", "scales"} so a benchmark can show where time goes without
  TensorBoard. With the compiled program's HLO text, "scales" attributes
  kernels to the sampler's per-scale named scopes (see `scale_timeline`).
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
  events = _device_events(data)
  for ev in events:
    ms = (ev[1] - ev[0]) / 1e6
    busy += ms
    a = agg.setdefault(ev[2], [0.0, 0])
    a[0] += ms
    a[1] += 1
  kernels = sorted(((k, v[0], v[1]) for k, v in agg.items()),
                   key=lambda x: -x[1])[:top]
  out = {"device_busy_ms": busy, "wall_ms": wall * 1e3, "kernels": kernels,
         "layout": layout, "gaps": _idle_gaps(events)}
  if hlo_text is not None:
    out["scales"] = scale_timeline(events, hlo_scopes(hlo_text))
  out["event_stats_sample"] = _stats_sample(data)
  return out


def _stats_sample(data, per_line: int = 3) -> List[Any]:
  """A few events' stats per device line (what the trace offers to attribute
  kernels with; differs between CPU and GPU and between jax versions)."""
  out = []
  for plane in data.planes:
    if not plane.name.startswith("/device:GPU"):
      continue
    for line in plane.lines:
      for ev in list(line.events)[:per_line]:
        out.append((line.name, ev.name[:60],
                    [(k, str(v)[:80]) for k, v in ev.stats][:12]))
  return out[:40]


def _device_events(data):
  """(start_ns, end_ns, kernel name, hlo_op or None) of every kernel on a
  device stream; on a CPU-only trace, of every thunk that names an hlo_op."""
  gpu = [p for p in data.planes if p.name.startswith("/device:GPU")]
  out = []
  for plane in gpu or data.planes:
    for line in plane.lines:
      # GPU: one line per stream; skip the aggregated "XLA Ops"/"Modules".
      if gpu and "Stream" not in line.name:
        continue
      for ev in line.events:
        # hlo_op names the instruction; the kernel name does not (XLA reuses
        # one kernel for identical fusions of different scales).
        op = next((str(v) for k, v in ev.stats if k == "hlo_op"), None)
        if not gpu and op is None:
          continue
        out.append((ev.start_ns, ev.start_ns + ev.duration_ns, ev.name, op))
  return out


_HLO_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=")
_HLO_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_OP_NAME = re.compile(r"op_name=\"([^\"]*)\"")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_SCALE = re.compile(r"\bscale(\d+)\b")


def hlo_scopes(hlo_text: str) -> Dict[str, int]:
  """Instruction name -> scale index, from the `scaleNN` named scope in the
  instruction's metadata op_name (the sampler opens one per scale).

  Fusions that XLA created without metadata take the scale of the first
  instruction with one inside the computation they call.
  """
  own, calls, comp_scale = {}, {}, {}
  comp = None
  for line in hlo_text.splitlines():
    if line and not line[0].isspace():
      m = _HLO_COMP.match(line)
      comp = m.group(1) if m else None
      continue
    m = _HLO_INSTR.match(line)
    if not m:
      continue
    op = _OP_NAME.search(line)
    sc = _SCALE.search(op.group(1)) if op else None
    if sc:
      own[m.group(1)] = int(sc.group(1))
      if comp is not None:
        comp_scale.setdefault(comp, int(sc.group(1)))
    else:
      c = _CALLS.search(line)
      if c:
        calls[m.group(1)] = c.group(1)
  for name, c in calls.items():
    if c in comp_scale:
      own[name] = comp_scale[c]
  # GPU kernels of XLA fusions are named after the fusion with "." -> "_".
  own.update({k.replace(".", "_"): v for k, v in list(own.items())})
  return own


_KERNEL_CLASSES = (
    # (class, name fragments), first match wins; names as the GPU trace
    # shows them (XLA fusions, cuBLAS nvjet/xmma/gemm, cuDNN SDPA, Pallas).
    ("weight_or_cache_slice", ("dynamic_slice_fusion",)),
    ("cache_write", ("dynamic_update_slice",)),
    ("attention", ("sdpa", "fmha", "flash", "fae")),
    ("gemm", ("nvjet", "gemm", "xmma", "cublas", "cutlass")),
    ("concat_copy", ("concatenate", "memcpy", "copy", "memset")),
)


def kernel_class(name: str) -> str:
  """Coarse kind of a kernel from its name: weight_or_cache_slice (a layer's
  slice of the stacked weights / caches), cache_write, attention, gemm,
  concat_copy, or elementwise (every other fusion)."""
  low = name.lower()
  for cls, parts in _KERNEL_CLASSES:
    if any(p in low for p in parts):
      return cls
  return "elementwise"


def scale_timeline(events, scopes: Dict[str, int]) -> Dict[str, Any]:
  """Per-scale device time from kernel events attributed by hlo_op.

  Walks the kernels in start order with a frontier (the latest end so far):
  each kernel's advance of the frontier, idle gap before it included, counts
  towards its scale's wall time, so the scales' wall_ms (plus the
  unattributed kernels' share) partition the traced span even where XLA
  schedules a scale's independent work early. busy_ms sums kernel durations.

  A kernel is attributed by its hlo_op stat, else by its own name (XLA
  fusion kernels), else (library kernels: cuBLAS, cuDNN; graph nodes) to the
  scale of the kernel before it, counted in "inherited_ms".

  Returns {"per_scale": [{"scale", "wall_ms", "busy_ms", "kernels",
  "busy_by_class"}, ...], "unattributed_wall_ms", "unattributed_busy_ms",
  "unattributed_top", "inherited_ms"}; busy_by_class splits a scale's kernel
  time by `kernel_class`.
  """
  per: Dict[Any, List[float]] = {}
  classes: Dict[Any, collections.Counter] = {}
  unattr = collections.Counter()
  frontier = None
  prev = None
  inherited = 0.0
  for start, end, name, op in sorted(events):
    si = scopes.get(op) if op is not None else None
    if si is None:
      si = scopes.get(name)
    if si is None and prev is not None:
      si = prev
      inherited += (end - start) / 1e6
    prev = si
    if si is None:
      unattr[name] += (end - start) / 1e6
    r = per.setdefault(si, [0.0, 0.0, 0])
    if frontier is None:
      frontier = start
    if end > frontier:
      r[0] += (end - frontier) / 1e6
      frontier = end
    r[1] += (end - start) / 1e6
    r[2] += 1
    classes.setdefault(si, collections.Counter())[kernel_class(name)] += (
        (end - start) / 1e6)
  none = per.pop(None, [0.0, 0.0, 0])
  rows = [{"scale": si, "wall_ms": r[0], "busy_ms": r[1], "kernels": r[2],
           "busy_by_class": dict(classes[si])}
          for si, r in sorted(per.items())]
  return {"per_scale": rows, "unattributed_wall_ms": none[0],
          "unattributed_busy_ms": none[1],
          "unattributed_top": unattr.most_common(8), "inherited_ms": inherited}


def _idle_gaps(events, top: int = 15) -> Dict[str, Any]:
  """Idle time between consecutive GPU kernels (all streams merged).

  The biggest gaps, with the kernels around them, show where the device waits
  for the host (while-loop predicates, launches) rather than computing.
  events: (start_ns, end_ns, name, hlo_op) from `_device_events`.
  """
  evs = sorted((start, end, name) for start, end, name, _ in events)
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
