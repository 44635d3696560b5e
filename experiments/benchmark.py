r"""Times sparsity plans on a random-weight model (GPU benchmark, not a test).

  python -m experiments.benchmark --variant=infinity_2b \
      --plans=dense,infinity_2b_paper,fastvar --unroll_tokens=256 --out=/tmp/b

--plans: 'dense', 'fastvar', a named plan, a JSON path, or a SkipVAR action
'skipvar_skipK[_uncondS]' (skip the last K scales; no unconditional branch
from scale S on). --scorer=frequency swaps an entropy plan's scorer for the
free FastVAR one. Each execution setting (`ExecutionConfig`) takes a value
or a comma-separated list, and every plan runs with every combination, e.g.
--kv_read=slice,buffer. Writes results.json and benchmarks.md (a section for
BENCHMARKS.md) into --out after every row. Needs no ml_collections.
"""

import json
import os
import pathlib

from absl import app
from absl import flags
from absl import logging
import jax

from toprovar_jax import io
from toprovar_jax import sharding
from toprovar_jax.bench import compile_time
from toprovar_jax.bench import latency
from toprovar_jax.bench import results
from toprovar_jax.models import config as config_lib

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
_MESH = flags.DEFINE_integer("mesh_devices", 0, "Run the sharded program on "
                             "a data mesh of N devices (0 = unsharded).")
_PROFILE = flags.DEFINE_bool("profile", False, "Also trace one call per row.")
_COMPILE_ONLY = flags.DEFINE_bool(
    "compile_only", False, "Only lower and compile, on abstract weights (no "
    "device memory, any backend): compile-time studies.")
_DUMP_HLO = flags.DEFINE_bool("dump_hlo", False,
                              "Write each row's optimised HLO (hlo_N.txt.gz).")

def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  os.environ.setdefault("XLA_FLAGS", latency.GPU_XLA_FLAGS)
  logging.info("devices: %s", jax.devices())
  setup = latency.BenchSetup(variant=_VARIANT.value, batch=_BATCH.value,
                             text_len=_TEXT_LEN.value)
  grid = latency.execution_grid({k: f.value for k, f in _EXECUTION.items()})
  cfg = config_lib.get_variant(_VARIANT.value)
  # Every plan is resolved (and validated) before anything is timed.
  plans = [latency.resolve_plan(n, cfg, scorer=_SCORER.value)
           for n in _PLANS.value]
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  cfg, tok, params, vparams, vae = latency.init_model(
      setup, abstract=_COMPILE_ONLY.value)
  cond = latency.conditioning(cfg, setup)
  meta = results.metadata(setup, results.source_digest(
      [pathlib.Path(__file__).parent]))
  mesh = (sharding.make_mesh(devices=jax.devices()[:_MESH.value])
          if _MESH.value else None)
  meta["mesh"] = None if mesh is None else sharding.mesh_axes(mesh)
  rows, errors = [], {}
  for plan in plans:
    for execution in grid:
      n = len(rows)
      try:
        if _COMPILE_ONLY.value:
          rows.append(compile_time.compile_plan(
              cfg, tok, params, vparams, cond, setup, plan,
              execution=execution))
        else:
          rows.append(latency.bench_plan(
              cfg, tok, params, vparams, vae, cond, setup, plan,
              execution=execution, runs=_RUNS.value,
              profile_dir=str(out / "trace" / str(n)) if _PROFILE.value
              else None,
              hlo_path=str(out / f"hlo_{n}.txt.gz") if _DUMP_HLO.value
              else None, mesh=mesh))
      except Exception as e:  # pylint: disable=broad-except
        # One failing row (e.g. a kernel this jax lacks) must not lose the
        # measurements of the others.
        key = latency.result_key(dict(
            plan=plan.name, execution=latency.execution_fields(execution)))
        logging.exception("%s failed", key)
        errors[key] = f"{type(e).__name__}: {e}"[:2000]
        continue
      logging.info("%s", rows[-1])
      _write(out, meta, rows, errors)  # after every row: a timeout loses none
  field = "compile_s" if _COMPILE_ONLY.value else "transformer_s"
  print(json.dumps({"errors": errors, **{
      latency.result_key(r): round(r[field], 4) for r in rows}}))


def _write(out, meta, rows, errors):
  result, text = results.record(meta, rows, errors,
                                compile_only=_COMPILE_ONLY.value)
  io.write_json_atomic(out / "results.json", result)
  io.write_text_atomic(out / "benchmarks.md", text)


if __name__ == "__main__":
  flags.mark_flags_as_required(["out"])
  app.run(main)
