r"""Generates images with one model and one sparsity plan (SPEC §9).

  python -m experiments.generate \
    --config=configs/tiny.py:model=infinity_tiny \
    --config.sampling.seed=3 --workdir=/tmp/tiny_infinity

Writes to --workdir, atomically: config.json (the resolved config),
sample_NNNN.png per image, grid.png, and results.json (model, plan, where the
parameters came from, seeds, labels / prompts, files, wall times). A workdir
that already holds files is refused unless --overwrite; nothing is deleted
either way (with --overwrite this run's files replace their namesakes).
"""

import time

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from toprovar_jax import io
from toprovar_jax import pipeline

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/tiny.py[:key=value,...].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder of the run.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Allow a workdir that already holds files.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  logging.info("JAX %s, process %d/%d, devices: %s", jax.__version__,
               jax.process_index(), jax.process_count(), jax.devices())
  logging.info("Config:\n%s", config)

  # Cheap validation first: a bad config fails before the workdir is touched.
  sampler = pipeline.sampler_from_config(config)
  conditions = pipeline.conditions_from_config(config, sampler)
  workdir = io.prepare_workdir(_WORKDIR.value, _OVERWRITE.value)
  logging.info("Plan %r, %d samples -> %s", sampler.resolved_plan.name,
               conditions.num_samples, workdir)
  if conditions.text_features:
    logging.warning("Text features are %s (no T5 encoder yet): images do not "
                    "follow the prompts.", conditions.text_features)

  t0 = time.perf_counter()
  params, vae_params, source = pipeline.load_or_init(
      config, jax.random.key(config.seed))
  init_s = time.perf_counter() - t0
  s = config.sampling
  out = pipeline.generate_images(
      sampler, params, vae_params, conditions, seed=s.seed,
      batch_size=s.batch_size, cfg_scale=s.cfg_scale, tau=s.tau)
  logging.info("Timings: %s", out.timings)

  # Everything is computed; now write (each file atomically, results last).
  samples = []
  for i, image in enumerate(out.images):
    name = f"sample_{i:04d}.png"
    io.write_png_atomic(workdir / name, image)
    sample = dict(file=name, seed=out.seeds[i], batch=out.batches[i],
                  row=out.rows[i])
    if conditions.labels is not None:
      sample["label"] = int(conditions.labels[i])
    else:
      sample.update(prompt=conditions.prompts[i],
                    text_tokens=conditions.text_lengths[i],
                    truncated=conditions.truncated[i])
    samples.append(sample)
  io.save_image_grid(workdir / "grid.png", out.images)
  io.write_json_atomic(workdir / "config.json", config.to_dict())
  results = dict(
      model=sampler.model.name, style=sampler.model.style,
      plan=sampler.resolved_plan.name, plan_spec=config.sparsity.plan,
      params_source=source.transformer, tokenizer_source=source.tokenizer,
      text_features=conditions.text_features or None,
      image_shape=list(out.images.shape[1:]),
      num_samples=conditions.num_samples, batch_size=s.batch_size,
      cfg_scale=s.cfg_scale, tau=s.tau, top_k=s.top_k, top_p=s.top_p,
      seeds=sorted(set(out.seeds)),
      labels=([int(x) for x in conditions.labels]
              if conditions.labels is not None else None),
      prompts=list(conditions.prompts) or None,
      samples=samples, grid="grid.png",
      timings=dict(init_or_load_s=init_s, **out.timings),
      devices=[str(d) for d in jax.devices()], jax_version=jax.__version__)
  io.write_json_atomic(workdir / "results.json", results)
  logging.info("Wrote %d images, grid.png, config.json, results.json to %s%s",
               len(samples), workdir,
               " (RANDOM-INIT parameters)" if source.random_init else "")


if __name__ == "__main__":
  # Required only when run as a script, so tests can import this module.
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
