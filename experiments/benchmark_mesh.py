r"""The sharded code path on a mesh vs today's unsharded program (SPEC §10).

  python -m experiments.benchmark_mesh --variant=infinity_2b --batch=8 \
      --out=/tmp/mesh

One plan (default dense) with random weights, the benchmark's settings
(bf16 blocks, cuDNN attention, `latency.GPU_XLA_FLAGS` unless XLA_FLAGS is
set), compiled unsharded and on a `data` mesh over the first
--mesh_devices devices (default 1: the "costs ≤ 2 % more" check), timed
interleaved (`bench.sharded.mesh_overhead`). Writes results.json into --out.
CPU smoke run: --variant=_emoji_tiny --attn_impl=xla --batch=2
--text_len=8 --runs=2.
"""

import os
import pathlib

from absl import app
from absl import flags
from absl import logging
import jax

from toprovar_jax import io
from toprovar_jax import sharding
from toprovar_jax.bench import latency
from toprovar_jax.bench import results
from toprovar_jax.bench import sharded
from toprovar_jax.sampling import sampler as sampler_lib

_VARIANT = flags.DEFINE_string("variant", "infinity_2b", "Model variant.")
_PLAN = flags.DEFINE_string("plan", "dense", "Plan to time.")
_BATCH = flags.DEFINE_integer("batch", 8, "Images per call (CFG doubles).")
_TEXT_LEN = flags.DEFINE_integer("text_len", 512, "Static padded text length.")
_ATTN = flags.DEFINE_string("attn_impl", "cudnn", "Attention implementation.")
_RUNS = flags.DEFINE_integer("runs", 5, "Timed rounds (median).")
_DEVICES = flags.DEFINE_integer("mesh_devices", 1,
                                "Devices of the mesh's data axis.")
_OUT = flags.DEFINE_string("out", None, "Output folder.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  os.environ.setdefault("XLA_FLAGS", latency.GPU_XLA_FLAGS)
  mesh = sharding.make_mesh(devices=jax.devices()[:_DEVICES.value])
  logging.info("devices: %s; mesh %s", jax.devices(), dict(mesh.shape))
  setup = latency.BenchSetup(variant=_VARIANT.value, batch=_BATCH.value,
                             text_len=_TEXT_LEN.value)
  cfg, tok, params, vparams, _ = latency.init_model(setup)
  plan = latency.resolve_plan(_PLAN.value, cfg)
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  row = sharded.mesh_overhead(
      cfg, tok, params, vparams, latency.conditioning(cfg, setup), setup,
      plan, execution=sampler_lib.ExecutionConfig(attn_impl=_ATTN.value),
      mesh=mesh, runs=_RUNS.value)
  meta = results.metadata(setup, results.source_digest(
      [pathlib.Path(__file__).parent]))
  io.write_json_atomic(out / "results.json", {**meta, **row})
  logging.info("%s", row)
  print({k: row[k] for k in ("transformer_s", "compile_s", "overhead",
                             "tokens_equal")})


if __name__ == "__main__":
  flags.mark_flags_as_required(["out"])
  app.run(main)
