r"""Times sparsity plans on a random-weight model (GPU benchmark, not a test).

  python -m experiments.benchmark --variant=infinity_2b \
      --plans=dense,infinity_2b_paper,fastvar --unroll_tokens=256 \
      --out=/tmp/bench

--plans: 'dense', 'fastvar', a named plan, a JSON path, or a SkipVAR action
'skipvar_skipK[_uncondS]' (skip the last K scales; no unconditional branch
from scale S on). --scorer=frequency swaps an entropy plan's scorer for the
free FastVAR one (the "entropy costs <= 3 %" check). The execution settings
(`ExecutionConfig`: --attn_impl, --entropy_impl, --kv_read, --layer_loop,
--unroll_tokens, --layer_unroll) each take one value or a comma-separated
list; every plan runs with every combination of the listed values, e.g.
--kv_read=slice,buffer times each plan both ways. Writes results.json and
benchmarks.md (a section for BENCHMARKS.md) into --out after every row.
Needs no ml_collections (the GPU machine has none).
"""

import json
import os
import pathlib

from absl import app
from absl import flags
from absl import logging
import jax

from toprovar_jax import io
from toprovar_jax.bench import compile_time
from toprovar_jax.bench import latency
from toprovar_jax.bench import results

_VARIANT = flags.DEFINE_string("variant", "infinity_2b", "Model variant.")
_PLANS = flags.DEFINE_list("plans", ["dense"], "Plans to time.")
_SCORER = flags.DEFINE_string("scorer", "", "Score entropy scales with this "
                              "scorer instead ('' = as the plan says).")
_EXECUTION = {name: flags.DEFINE_list(name, [default], help) for name, default,
              help in (
                  ("attn_impl", "cudnn", "Attention implementation(s)."),
                  ("entropy_impl", "", "Probe layers' attention ('' = "
                   "attn_impl; pallas, cudnn, xla)."),
                  ("kv_read", "slice", "KV-cache read(s): slice, buffer."),
                  ("layer_loop", "scan", "Layer loop(s): scan, while."),
                  ("unroll_tokens", "0", "Unroll runs of <= N tokens a row."),
                  ("layer_unroll", "1", "Layers per scan step (0 = all)."))}
_RUNS = flags.DEFINE_integer("runs", 7, "Timed runs per row (median).")
_BATCH = flags.DEFINE_integer("batch", 1, "Images per call (CFG doubles).")
_TEXT_LEN = flags.DEFINE_integer("text_len", 512, "Static padded text length.")
_OUT = flags.DEFINE_string("out", None, "Output folder.")
_PROFILE = flags.DEFINE_bool("profile", False, "Also trace one call per row.")
_COMPILE_ONLY = flags.DEFINE_bool(
    "compile_only", False, "Only lower and compile, on abstract weights (no "
    "device memory, any backend): compile-time studies.")
_DUMP_HLO = flags.DEFINE_bool("dump_hlo", False,
                              "Write each row's optimised HLO (hlo_N.txt.gz).")

# Measured on the H200 (BENCHMARKS.md runs 4-5): CUDA-graph command buffers
# for WHILE / CONDITIONAL remove most of the host round trips of the layer
# loops (dense 0.415 -> 0.386 s, paper plan 0.377 -> 0.294 s); cuBLAS
# rather than Triton GEMMs take the bias in the epilogue (dense 0.297 ->
# 0.291 s). Only set when the user did not choose flags.
_GPU_XLA_FLAGS = ("--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,"
                  "CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL "
                  "--xla_gpu_graph_min_graph_size=1 "
                  "--xla_gpu_enable_triton_gemm=false")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  os.environ.setdefault("XLA_FLAGS", _GPU_XLA_FLAGS)
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  logging.info("devices: %s", jax.devices())
  setup = latency.BenchSetup(variant=_VARIANT.value, batch=_BATCH.value,
                             text_len=_TEXT_LEN.value)
  grid = latency.execution_grid({k: f.value for k, f in _EXECUTION.items()})
  cfg, tok, params, vparams, vae = latency.init_model(
      setup, abstract=_COMPILE_ONLY.value)
  cond = latency.conditioning(cfg, setup)
  meta = results.metadata(setup, results.source_digest(
      [pathlib.Path(__file__).parent]))
  rows, errors = [], {}
  for name in _PLANS.value:
    plan = latency.resolve_plan(name, cfg, scorer=_SCORER.value)
    for execution in grid:
      key = latency.result_key(dict(
          plan=plan.name, execution=latency.execution_fields(execution)))
      if _COMPILE_ONLY.value:
        rows.append(compile_time.compile_plan(cfg, tok, params, vparams, cond,
                                              setup, plan,
                                              execution=execution))
        _write(out, dict(meta, compile_only=rows),
               results.compile_markdown)
        continue
      extra = dict(
          profile_dir=(str(out / "trace" / str(len(rows)))
                       if _PROFILE.value else None),
          hlo_path=(str(out / f"hlo_{len(rows)}.txt.gz")
                    if _DUMP_HLO.value else None))
      try:
        rows.append(latency.bench_plan(cfg, tok, params, vparams, vae, cond,
                                       setup, plan, execution=execution,
                                       runs=_RUNS.value, **extra))
      except Exception as e:  # pylint: disable=broad-except
        # One failing row (e.g. a kernel this jax lacks) must not lose the
        # measurements of the others.
        logging.exception("%s failed", key)
        errors[key] = f"{type(e).__name__}: {e}"[:2000]
        continue
      logging.info("%s: %s", key, rows[-1])
      results.add_speedups(rows)
      # After every row: a timeout loses nothing.
      _write(out, dict(meta, peak_memory_gib=latency.peak_memory_gib(),
                       plans=rows, errors=errors), results.markdown)
  field = "compile_s" if _COMPILE_ONLY.value else "transformer_s"
  if errors:
    print(json.dumps({"errors": errors}))
  print(json.dumps({latency.result_key(r): round(r[field], 4) for r in rows}))


def _write(out, result, markdown):
  io.write_json_atomic(out / "results.json", result)
  io.write_text_atomic(out / "benchmarks.md", markdown(result))


if __name__ == "__main__":
  flags.mark_flags_as_required(["out"])
  app.run(main)
