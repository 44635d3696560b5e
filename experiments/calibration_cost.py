r"""Cost of a calibration image against a dense one (GPU; random weights).

  python -m experiments.calibration_cost --variant=infinity_2b \
      --out=$OUT/calibration_cost

Times, on random weights (speed only): dense generation, and the
calibration program (dense with the entropy of every F layer recorded,
`SamplingConfig(record_entropy=True)`) plus what the host does with it
(copying the entropy and folding it into `EntropyStatistics`); the BSQ
decode of the dense reference image apart. Reports seconds per image,
their ratio (target <= 1.5x), peak device memory after each program and
the projected time of a --num_prompts calibration. Writes
calibration_cost.json into --out. Needs no ml_collections.
"""

import dataclasses
import os
import pathlib
import statistics
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from toprovar_jax import io
from toprovar_jax.bench import latency
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import statistics as stats_lib

_VARIANT = flags.DEFINE_string("variant", "infinity_2b", "Model variant.")
_BATCH = flags.DEFINE_integer("batch", 1, "Images per call.")
_RUNS = flags.DEFINE_integer("runs", 3, "Timed runs (median).")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "Compute dtype.")
_TEXT_LEN = flags.DEFINE_integer("text_len", 512, "Static text length.")
_ATTN = flags.DEFINE_string("attn_impl", "cudnn", "Attention of plain layers.")
_ENTROPY = flags.DEFINE_string("entropy_impl", "pallas", "Attention of the "
                               "layers that record entropy.")
_PROMPTS = flags.DEFINE_integer("num_prompts", 100, "For the projection.")
_OUT = flags.DEFINE_string("out", None, "Output folder.")


def _median_s(fn, runs):
  times = []
  for _ in range(runs):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # The benchmark's GPU flags (CUDA graphs), so dense matches BENCHMARKS.md.
  os.environ.setdefault("XLA_FLAGS", latency.GPU_XLA_FLAGS)
  setup = latency.BenchSetup(variant=_VARIANT.value, batch=_BATCH.value,
                             text_len=_TEXT_LEN.value, dtype=_DTYPE.value)
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  cfg, tok, params, vparams, vae = latency.init_model(setup)
  cond = latency.conditioning(cfg, setup)
  execution = latency.sampler_lib.ExecutionConfig(
      attn_impl=_ATTN.value, entropy_impl=_ENTROPY.value or None)
  dense = latency.make_sampler(cfg, tok, setup, plan_lib.dense_plan(cfg),
                               execution)
  calib = dataclasses.replace(dense, sampling=dataclasses.replace(
      dense.sampling, record_entropy=True))
  b = setup.batch
  record = dict(variant=cfg.name, batch=b, dtype=setup.dtype,
                execution=dataclasses.asdict(execution),
                devices=[str(d) for d in jax.devices()])
  stats = stats_lib.EntropyStatistics(
      schedule=cfg.schedule, num_layers=cfg.depth,
      rep_scale=stats_lib.find_rep_scale(cfg.schedule, 12))

  def calibration_step(fn, args, arrays):
    gen = jax.block_until_ready(fn(*args, **arrays))
    stats.add_batch([np.asarray(e) for e in gen.entropy], b)
    return gen

  for name, smp in (("dense", dense), ("calibration", calib)):
    compiled, args, arrays = latency.compile_program(smp, params, vparams,
                                                     cond)
    fn = compiled.fn
    if name == "dense":
      step = lambda: jax.block_until_ready(fn(*args, **arrays))
    else:
      step = lambda: calibration_step(fn, args, arrays)
    gen = step()  # warm-up
    record[f"{name}_compile_s"] = compiled.lower_s + compiled.compile_s
    record[f"{name}_s_per_image"] = _median_s(step, _RUNS.value) / b
    record[f"{name}_peak_gib"] = latency.peak_memory_gib()
    logging.info("%s: %s", name, record)
    io.write_json_atomic(out / "calibration_cost.json", record)
  t = time.perf_counter()
  stats.add_batch([np.asarray(e) for e in gen.entropy], b)
  record["host_statistics_s_per_image"] = (time.perf_counter() - t) / b
  decode = jax.jit(lambda vp, z: vae.apply(vp, z.astype(vp_dtype(vp)),
                                           method=type(vae).decode))
  jax.block_until_ready(decode(vparams, gen.latent))
  record["decode_s_per_image"] = _median_s(
      lambda: jax.block_until_ready(decode(vparams, gen.latent)),
      _RUNS.value) / b
  ratio = record["calibration_s_per_image"] / record["dense_s_per_image"]
  per_image = record["calibration_s_per_image"] + record["decode_s_per_image"]
  record.update(
      calibration_over_dense=ratio, meets_1_5x=ratio <= 1.5,
      num_prompts=_PROMPTS.value,
      projected_calibration_s=(record["calibration_compile_s"]
                               + _PROMPTS.value * per_image))
  io.write_json_atomic(out / "calibration_cost.json", record)
  print(record)


def vp_dtype(vp):
  return jax.tree.leaves(vp)[0].dtype


if __name__ == "__main__":
  flags.mark_flags_as_required(["out"])
  app.run(main)
