r"""Generates images with one model and one or more sparsity plans (SPEC §9).

  python -m experiments.generate \
    --config=configs/tiny.py:model=infinity_tiny \
    --config.sampling.seed=3 --workdir=/tmp/tiny_infinity
  python -m experiments.generate --config=configs/emoji.py \
    --workdir=workdirs/main --overwrite

Writes to --workdir, as one set (`io.publish`): config.json (the resolved
config), results.json (model, plans, where the parameters came from, seeds,
labels / prompts, files, FLOPs, wall times, "outputs") and PNGs. With one
plan: sample_NNNN.png per image and grid.png. With several
(`config.sparsity.plan` plus `config.sparsity.compare`, same seeds and
conditions): sample_<plan>_NNNN.png and grid_<plan>.png per plan, and
grid.png with one labelled row per plan. A workdir that already holds files
is refused unless --overwrite; with it, the previous run's outputs (those
its results.json lists) are replaced by this run's, other files stay, and a
failed write leaves the previous run whole (or, later, no results.json).
"""

import time

from absl import app
from absl import flags
from absl import logging
import jax

from experiments import launch
from experiments import run_flags
from toprovar_jax import io
from toprovar_jax import pipeline
from toprovar_jax import report
from toprovar_jax import sharding
from toprovar_jax.sampling import runner
from toprovar_jax.text import features

# Several hosts (README "Several devices and hosts"): one process per host.
_COORDINATOR = flags.DEFINE_string(
    "coordinator", "", "host:port of process 0 ('' = one process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's id.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  run_flags.refuse_unused("generate", "config", "workdir", "overwrite")
  sharding.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                      _PROCESS_ID.value)
  config = run_flags.CONFIG.value
  logging.info("JAX %s, process %d/%d, devices: %s", jax.__version__,
               jax.process_index(), jax.process_count(), jax.devices())
  logging.info("Config:\n%s", config)

  # Cheap validation first: a bad config fails before the workdir is touched.
  with launch.input_phase():
    samplers = pipeline.generators_from_config(config)
    conditions = pipeline.conditions_from_config(config, samplers[0])
    mesh = pipeline.mesh_from_config(config)
    # Several processes (README "Several hosts"): all compute, process 0 writes.
    writer = jax.process_index() == 0
    workdir = (io.prepare_workdir(run_flags.WORKDIR.value,
                                    run_flags.OVERWRITE.value) if writer
               else None)
  logging.info("Plans %s, %d samples, mesh %s -> %s",
               [runner.run_name(s) for s in samplers],
               conditions.num_samples, dict(mesh.shape), workdir)
  if conditions.text_features == features.PLACEHOLDER_TEXT:
    logging.warning("Text features are %s (no t5_dir= given): images do not "
                    "follow the prompts.", conditions.text_features)

  t0 = time.perf_counter()
  params, vae_params, source = pipeline.params_from_config(
      config, jax.random.key(config.seed))
  init_s = time.perf_counter() - t0
  s = config.sampling
  runs = runner.run_plans(
      samplers, pipeline.plan_specs(config), params, vae_params, conditions,
      seed=s.seed, batch_size=s.batch_size, cfg_scale=s.cfg_scale, tau=s.tau,
      text_tokens=s.text_len, mesh=mesh)
  if not writer:
    return

  # Everything is computed; now publish the set (io.publish: staged, the
  # previous run's record and outputs replaced, results.json last).
  compare = len(runs) > 1
  outputs, files, grids = {}, [], []
  for run in runs:
    prefix = f"sample_{run.slug}_" if compare else "sample_"
    files.append([f"{prefix}{i:04d}.png"
                  for i in range(len(run.output.images))])
    outputs.update((name, io.png_writer(image))
                   for name, image in zip(files[-1], run.output.images))
    grids.append(f"grid_{run.slug}.png" if compare else "grid.png")
    outputs[grids[-1]] = io.png_writer(io.image_grid(run.output.images))
  if compare:
    outputs["grid.png"] = io.png_writer(report.comparison_grid(
        runs, conditions.prompts))
  outputs["config.json"] = io.json_bytes(config.to_dict())
  io.publish(workdir, outputs, record=report.results_record(
      config=config, runs=runs, conditions=conditions, source=source,
      init_s=init_s, files=files, grids=grids, grid="grid.png",
      outputs=list(outputs)))
  logging.info("Wrote %d plans x %d images, grid.png, config.json, "
               "results.json to %s%s", len(runs), conditions.num_samples,
               workdir, " (RANDOM-INIT parameters)" if source.random_init
               else "")


if __name__ == "__main__":
  # Required only when run as a script, so tests can import this module.
  flags.mark_flags_as_required(["config", "workdir"])
  launch.run(main)
