r"""Times sparsity plans on a random-weight model (GPU benchmark, not a test).

  python -m experiments.benchmark --variant=infinity_2b \
      --plans=dense,infinity_2b_paper,fastvar --out=/tmp/bench

`--plans` items are 'dense', 'fastvar', a SkipVAR action
'skipvar_skipK[_uncondS]' (skip the last K scales, drop the unconditional
branch from scale S on), a named plan under configs/plans/ or a JSON path;
append '@pallas' / '@cudnn' to choose the entropy kernel of probe
layers, '#uN' to unroll N layers per scan step (0 = all),
'~frequency' to swap an entropy plan's scorer for the free
FastVAR frequency scorer (the "≤ 3 % slower than a free scorer" check), and
'%buffer' to read the KV cache in place (SamplingConfig.kv_read), and a
final '^N' to unroll the runs of layers that see at most N tokens per row
(SamplingConfig.unroll_tokens), e.g. 'dense@cudnn#u1%buffer^1024'.
Writes `results.json` and `benchmarks.md` (a section for BENCHMARKS.md) into
--out. Needs no ml_collections (the GPU machine has none).
"""

import dataclasses
import datetime
import json
import os
import re
import subprocess

from absl import app
from absl import flags
from absl import logging
import jax

from toprovar_jax import benchmarking
from toprovar_jax.sparsity import baselines
from toprovar_jax.sparsity import named
from toprovar_jax.sparsity import validation

_VARIANT = flags.DEFINE_string("variant", "infinity_2b", "Model variant.")
_PLANS = flags.DEFINE_list("plans", ["dense"], "Plans to time.")
_RUNS = flags.DEFINE_integer("runs", 7, "Timed runs per plan (median).")
_BATCH = flags.DEFINE_integer("batch", 1, "Images per call (CFG doubles).")
_TEXT_LEN = flags.DEFINE_integer("text_len", 512, "Static padded text length.")
_ATTN = flags.DEFINE_string("attn_impl", "cudnn", "Attention implementation.")
_OUT = flags.DEFINE_string("out", None, "Output folder.")
_PROFILE = flags.DEFINE_bool("profile", False,
                             "Also trace one call per plan: top kernels.")
_LAYER_LOOP = flags.DEFINE_enum(
    "layer_loop", "scan", ["scan", "while"],
    "SamplingConfig.layer_loop of every plan (with 'while' and "
    "--xla_gpu_enable_dynamic_slice_fusion=true XLA may read weights in "
    "place).")
_COMPILE_ONLY = flags.DEFINE_bool(
    "compile_only", False,
    "Only lower and compile each plan, on abstract weights (no device "
    "memory, any backend): compile-time studies, e.g. of unroll_tokens.")
_DUMP_HLO = flags.DEFINE_bool("dump_hlo", False,
                              "Write each plan's optimised HLO (hlo_N.txt.gz).")


def _plan(spec, cfg):
  spec, _, unroll_tokens = spec.partition("^")
  spec, _, kv_read = spec.partition("%")
  spec, _, unroll = spec.partition("#u")
  name, _, scorer = spec.partition("~")
  name, _, entropy_impl = name.partition("@")
  skip = re.fullmatch(r"skipvar_skip(\d+)(?:_uncond(\d+))?", name)
  if skip:
    plan = validation.validate_plan(baselines.skipvar_plan(
        cfg, skip_scales=int(skip.group(1)),
        drop_uncond_from=(int(skip.group(2)) if skip.group(2) else None)), cfg)
  else:
    plan = named.load_plan(name, cfg)
  if scorer:
    scales = tuple(dataclasses.replace(
        s, scorer=scorer, probe_layer=None) if s.scorer == "entropy" else s
                   for s in plan.scales)
    plan = dataclasses.replace(plan, name=f"{plan.name}~{scorer}",
                               scales=scales)
    plan = validation.validate_plan(plan, cfg)
  return (plan, entropy_impl or None, int(unroll) if unroll else 1,
          kv_read or "slice", int(unroll_tokens) if unroll_tokens else 0)


# Measured on the H200 (BENCHMARKS.md): XLA runs every while-loop iteration
# (our lax.scan over layers) with a device->host copy of its predicate, which
# left the GPU idle for most of a sparse plan's wall time; CUDA-graph command
# buffers for WHILE / CONDITIONAL remove part of that (dense 0.415 -> 0.386 s,
# paper plan 0.377 -> 0.294 s). cuBLAS rather than Triton GEMMs: the small
# GEMMs of the small scales then take their bias in the epilogue instead of
# a split-K reduction plus a bias kernel (dense 0.297 -> 0.291 s, paper plan
# 0.161 -> 0.159 s). Only set when the user did not choose flags.
_GPU_XLA_FLAGS = ("--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,"
                  "CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL "
                  "--xla_gpu_graph_min_graph_size=1 "
                  "--xla_gpu_enable_triton_gemm=false")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  os.environ.setdefault("XLA_FLAGS", _GPU_XLA_FLAGS)
  os.makedirs(_OUT.value, exist_ok=True)
  logging.info("devices: %s", jax.devices())
  setup = benchmarking.BenchSetup(variant=_VARIANT.value, batch=_BATCH.value,
                                  text_len=_TEXT_LEN.value,
                                  attn_impl=_ATTN.value)
  if _COMPILE_ONLY.value:
    _compile_only(setup)
    return
  cfg, tok, params, vparams, vae = benchmarking.init_model(setup)
  cond = benchmarking.conditioning(cfg, setup)
  rows, errors = [], {}
  for spec in _PLANS.value:
    plan, entropy_impl, unroll, kv_read, unroll_tokens = _plan(spec, cfg)
    trace = (os.path.join(_OUT.value, "trace", str(len(rows)))
             if _PROFILE.value else None)
    try:
      r = benchmarking.bench_plan(cfg, tok, params, vparams, vae, cond, setup,
                                  plan, runs=_RUNS.value,
                                  entropy_impl=entropy_impl,
                                  layer_unroll=unroll, kv_read=kv_read,
                                  unroll_tokens=unroll_tokens,
                                  layer_loop=_LAYER_LOOP.value,
                                  profile_dir=trace,
                                  hlo_path=(os.path.join(
                                      _OUT.value, f"hlo_{len(rows)}.txt.gz")
                                            if _DUMP_HLO.value else None))
    except Exception as e:  # pylint: disable=broad-except
      # One failing plan (e.g. a kernel this jax lacks) must not lose the
      # measurements of the others.
      logging.exception("plan %s failed", spec)
      errors[spec] = f"{type(e).__name__}: {e}"[:2000]
      continue
    logging.info("%s", r)
    rows.append(r)
    _write(setup, rows, errors)  # after every plan: a timeout loses nothing
  _write(setup, rows, errors)
  if errors:
    print(json.dumps({"errors": errors}))
  print(json.dumps({benchmarking.result_key(r): round(r["transformer_s"], 4)
                    for r in rows}))


def _compile_only(setup):
  """--compile_only: lower + compile times per plan into results.json and
  benchmarks.md."""
  cfg, tok, params, vparams, _ = benchmarking.init_model(setup, abstract=True)
  cond = jax.eval_shape(lambda: benchmarking.conditioning(cfg, setup))
  rows = []
  for spec in _PLANS.value:
    plan, entropy_impl, unroll, kv_read, unroll_tokens = _plan(spec, cfg)
    rows.append(benchmarking.compile_plan(
        cfg, tok, params, vparams, cond, setup, plan,
        entropy_impl=entropy_impl, layer_unroll=unroll, kv_read=kv_read,
        unroll_tokens=unroll_tokens, layer_loop=_LAYER_LOOP.value))
    logging.info("%s", rows[-1])
    result = {**_metadata(setup), "compile_only": rows}
    with open(os.path.join(_OUT.value, "results.json"), "w") as f:
      json.dump(result, f, indent=1)
    lines = [f"Compile only, {setup.variant}, backend {rows[0]['backend']}, "
             f"jax {jax.__version__}, commit {result['commit']} (source "
             f"digest {result['source_digest']}):", "",
             "| plan | unroll_tokens | layer_loop | lower s | compile s |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['plan']} | {r['unroll_tokens']} | {r['layer_loop']} | "
              f"{r['lower_s']:.1f} | {r['compile_s']:.1f} |" for r in rows]
    with open(os.path.join(_OUT.value, "benchmarks.md"), "w") as f:
      f.write("\n".join(lines) + "\n")
  print(json.dumps({r["plan"] + (f"^{r['unroll_tokens']}"
                                 if r["unroll_tokens"] else ""):
                    round(r["compile_s"], 1) for r in rows}))


def _write(setup, rows, errors):
  dense = next((r for r in rows if r["plan"] == "dense"
                and r.get("kv_read", "slice") == "slice"
                and not r.get("unroll_tokens")), None)
  for r in rows:
    if dense:
      r["measured_speedup"] = dense["transformer_s"] / r["transformer_s"]
  result = {**_metadata(setup),
            "peak_memory_gib": benchmarking.peak_memory_gib(),
            "plans": rows, "errors": errors}
  with open(os.path.join(_OUT.value, "results.json"), "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(_OUT.value, "benchmarks.md"), "w") as f:
    f.write(_markdown(result))


def _metadata(setup):
  """What every results.json records about the run."""
  return {"setup": dataclasses.asdict(setup), "device": str(jax.devices()[0]),
          "jax": jax.__version__,
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
          "commit": _commit(), "source_digest": benchmarking.source_digest()}


def _commit():
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True,
                          check=False).stdout.strip() or "unknown"
  except OSError:
    return "unknown"


def _gib(x):
  return "not reported" if x is None else f"{x:.1f} GiB"


def _markdown(res):
  s = res["setup"]
  lines = [
      f"### {s['variant']} — batch {s['batch']} (CFG ×2), {s['dtype']}, "
      f"attention {s['attn_impl']}, text_len {s['text_len']}",
      "", f"Device {res['device']}, jax {res['jax']}, {res['date'][:10]}, "
      f"commit {res['commit']} (source digest {res['source_digest']}); "
      "peak device memory "
      f"{_gib(res['peak_memory_gib'])} (whole process).", "",
      "| plan | transformer s | with decode s | decode s | compile s | "
      "TFLOP | FLOP speedup | measured speedup |",
      "|---|---|---|---|---|---|---|---|"]
  for r in res["plans"]:
    name = (r["plan"] + (f" @{r['entropy_impl']}" if r["entropy_impl"] else "")
            + f" (unroll {r['layer_unroll']}"
            + (f", kv {r['kv_read']}" if r.get("kv_read", "slice") != "slice"
               else "")
            + (f", unroll ≤{r['unroll_tokens']} tokens"
               if r.get("unroll_tokens") else "")
            + (", while loops)" if r.get("layer_loop") == "while" else ")"))
    lines.append(
        f"| {name} | {r['transformer_s']:.4f} | {r['with_decode_s']:.4f} | "
        f"{r['decode_only_s']:.4f} | {r['compile_s']:.1f} | {r['tflop']:.2f} | "
        f"{r['flop_speedup']:.2f}× | {r.get('measured_speedup', 1.0):.2f}× |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  flags.mark_flags_as_required(["out"])
  app.run(main)
