r"""Evaluates sparsity plans against dense on the same seeds (issue 13, item 6).

  python -m experiments.evaluate --config=configs/emoji.py \
    --prompts=captions.txt --plans=dense,fastvar,emoji_default,my/plan.json \
    --seed=0 --workdir=/tmp/eval_emoji
  python -m experiments.evaluate --config=configs/tiny.py:model=var_tiny \
    --prompts=labels.txt --plans=skipvar_skip2 --workdir=/tmp/eval_tiny

--prompts: one caption (text models) or class id (VAR) per line. Each plan
generates every prompt (--num_samples cycles them) with the same seed
(image j: fold_in(key(seed), j)); dense is always run first, as the
reference. Plans run on the config's mesh (`config.mesh`, default every
device); per-image plans (skipvar, adaptive:) run unsharded. Writes to
--workdir, after all compute, as one set (`io.publish`: with --overwrite
the previous run's outputs go, results.json last): results.json (the mesh;
per plan: flop_speedup, ssim, psnr, lpips, fd_alexnet, latency_s, the
mesh it ran on, ...), results.md (the table), frontier.png (SSIM vs FLOP
reduction), grid.png (the first --grid_columns captions under every plan)
and config.json. Bad input (unknown plan, unreadable or empty prompts
file, a workdir holding files without --overwrite) stops with one line
naming the field, before any compute and with nothing written.
"""

import functools
import time

from absl import app
from absl import flags
from absl import logging
import jax

from experiments import launch
from experiments import run_flags
from toprovar_jax import io
from toprovar_jax import pipeline
from toprovar_jax.sampling import runner
from toprovar_jax.evaluation import plans
from toprovar_jax.metrics import lpips

# --plans (run_flags) when not given.
_DEFAULT_PLANS = ("dense", "fastvar")
_NUM_SAMPLES = flags.DEFINE_integer(
    "num_samples", 0, "Images per plan; 0 = one per prompt, else cycled.")
_GRID_COLUMNS = flags.DEFINE_integer("grid_columns", 8, "Captions in grid.")


def _dynamic_generator(config, spec):
  """The single hand-off of per-image specs ('skipvar', 'adaptive:PATH'):
  `pipeline.generator_from_spec`; its Output's flops_per_image gives the
  FLOPs."""
  try:
    gen = pipeline.generator_from_spec(config, spec)
  except ValueError as e:
    raise ValueError(f"--plans: {spec!r}: {e}") from None
  run = functools.partial(runner.generate_images, gen,
                          text_tokens=config.sampling.text_len)
  return plans.PlanGenerator(spec=spec, name=runner.run_name(gen), run=run,
                             flops=None)


def _setup(config):
  """Everything cheap and checkable, before any compute or write."""
  specs = plans.parse_plan_specs(
      ",".join(run_flags.PLANS.value or _DEFAULT_PLANS))
  lines = plans.read_prompts(run_flags.PROMPTS.value)
  if _NUM_SAMPLES.value < 0:
    raise ValueError(f"--num_samples: must be >= 0, got {_NUM_SAMPLES.value}")
  if _GRID_COLUMNS.value < 1:
    raise ValueError(f"--grid_columns: must be >= 1, got {_GRID_COLUMNS.value}")
  base = pipeline.sampler_from_config(config)
  text_len = config.sampling.text_len
  gens = plans.resolve_generators(
      specs, base, text_tokens=text_len,
      dynamic=lambda spec: _dynamic_generator(config, spec))
  conditions = plans.make_conditions(base.model, lines,
                                     num_samples=_NUM_SAMPLES.value,
                                     text_len=text_len)
  # 0 (configs/emoji.py's default) = all images in one batch.
  batch_size = runner.images_per_call(run_flags.batch_size(config),
                                      conditions.num_samples)
  mesh = pipeline.mesh_from_config(config)
  workdir = io.prepare_workdir(run_flags.WORKDIR.value,
                               run_flags.OVERWRITE.value)
  return gens, conditions, batch_size, mesh, workdir


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  run_flags.refuse_unused("evaluate", "config", "workdir", "overwrite",
      "prompts", "seed", "batch_size", "plans")
  t0 = time.perf_counter()
  config = run_flags.CONFIG.value
  logging.info("JAX %s, %s; config:\n%s", jax.__version__, jax.devices(),
               config)
  with launch.input_phase():  # bad input: one line, nothing written
    gens, conditions, batch_size, mesh, workdir = _setup(config)
  seed = run_flags.seed(config)
  params, vae_params, source = pipeline.params_from_config(
      config, jax.random.key(config.seed))
  s = config.sampling
  results = plans.evaluate_plans(
      gens, params, vae_params, conditions, seed=seed, batch_size=batch_size,
      cfg_scale=s.cfg_scale, tau=s.tau, lpips_params=lpips.load_params(),
      mesh=mesh)

  # Everything is computed; now publish the set (io.publish: the previous
  # run's record and outputs replaced, results.json last).
  files = dict(table="results.md", frontier="frontier.png", grid="grid.png",
               config="config.json")
  record = plans.results_record(
      results, config=config.to_dict(), seed=seed,
      prompts_file=run_flags.PROMPTS.value, conditions=conditions,
      batch_size=batch_size, files=files, mesh=mesh,
      params_source=source.transformer,
      tokenizer_source=source.tokenizer, wall_s=time.perf_counter() - t0)
  io.publish(workdir, {
      files["grid"]: io.png_writer(plans.grid_image(
          results, conditions, max_columns=_GRID_COLUMNS.value)),
      files["frontier"]: io.png_writer(plans.frontier_image(record)),
      files["table"]: plans.markdown_table(record).encode("utf-8"),
      files["config"]: io.json_bytes(config.to_dict())}, record=record)
  logging.info("%s\nWrote %s and results.json to %s (%.0f s)",
               plans.markdown_table(record), sorted(files.values()), workdir,
               record["wall_s"])


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "prompts", "workdir"])
  launch.run(main)
