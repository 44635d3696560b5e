r"""Calibrates a ToProVAR plan from prompts (SPEC §5, §9).

  python -m experiments.calibrate --config=configs/emoji.py \
    --prompts=prompts.txt --num_images=32 --workdir=workdirs/calib
  python -m experiments.calibrate --config=configs/emoji.py \
    --prompts=prompts.txt --num_images=32 --target_ssim=0.85 \
    --workdir=workdirs/calib   # resumes the dense run above, then searches

Dense generation with every layer's attention entropy recorded, saved after
every batch (an interrupted run resumes from --workdir), then the three
levels; --target_ssim searches tau, rho*, alpha_min, alpha_max for the
cheapest plan with that mean SSIM vs dense (frontier.json, frontier.png).
Both generate on the config's mesh (`config.mesh`, default every device;
the statistics are reduced on the host in global row order).
Writes plan.json (`--config.sparsity.plan=WORKDIR/plan.json`),
calibration.json (with the mesh), rho_s.png, layer_ratio.png,
entropy_maps.png, kept_tokens.png and dense/NNNN.png.
"""

import pathlib

from absl import app
from absl import flags
from absl import logging
import jax

from experiments import launch
from experiments import run_flags
from toprovar_jax import flops as flops_lib
from toprovar_jax import io
from toprovar_jax import pipeline
from toprovar_jax.evaluation import budget
from toprovar_jax.evaluation import calibration as run_lib
from toprovar_jax.sparsity import calibration

_TARGET = flags.DEFINE_float("target_ssim", 0.0, "Budget mode: mean SSIM vs "
                             "dense to meet (0 = off).")
_MAX_EVALS = flags.DEFINE_integer("max_evals", 8, "Budget mode: most plans "
                                  "generated.")
_REP = flags.DEFINE_integer("rep_side", 12, "Representative scale (side).")
_TAU = flags.DEFINE_float("tau", 0.4, "tau of the scale rule.")
_DIR = flags.DEFINE_enum("direction", "rise", calibration.DIRECTIONS,
                         "rise: D = first rho_s >= tau; fall: <= tau.")
_DMIN = flags.DEFINE_integer("min_scale", 1, "Earliest prunable scale.")
_STAR = flags.DEFINE_float("rho_star", 0.0, "Global cut (0 = largest gap).")
_AMIN = flags.DEFINE_float("alpha_min", 0.0, "Gate alpha_min.")
_AMAX = flags.DEFINE_float("alpha_max", 1.0, "Gate alpha_max.")
_SOURCE = flags.DEFINE_enum("entropy_from", "auto", calibration.ENTROPY_FROM,
                            "Entropy source of pruned scales.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  run_flags.refuse_unused("calibrate", "config", "workdir", "overwrite",
      "prompts", "seed", "num_images", "batch_size", "name")
  config, s = run_flags.CONFIG.value, run_flags.CONFIG.value.sampling
  with launch.input_phase():
    base = calibration.CalibrationConfig(
        tau=_TAU.value, direction=_DIR.value, min_scale=_DMIN.value,
        rho_star=_STAR.value,
        alpha_min=_AMIN.value, alpha_max=_AMAX.value,
        entropy_from=_SOURCE.value,
        **({"name": run_flags.NAME.value} if run_flags.NAME.value else {}))
    sampler = pipeline.sampler_from_config(config)
    model = sampler.model
    mesh = pipeline.mesh_from_config(config)
    conditions = run_lib.read_conditions(run_flags.PROMPTS.value, model,
                                         num_images=run_flags.NUM_IMAGES.value,
                                         text_len=s.text_len)
    resume = (pathlib.Path(run_flags.WORKDIR.value) / run_lib.STATE).exists()
    workdir = io.prepare_workdir(run_flags.WORKDIR.value,
                                 run_flags.OVERWRITE.value or resume)
  params, vae_params, _ = pipeline.params_from_config(
      config, jax.random.key(config.seed))
  run = dict(seed=run_flags.seed(config),
             batch_size=run_flags.batch_size(config),
             cfg_scale=s.cfg_scale, tau=s.tau, mesh=mesh)
  stats = run_lib.collect(sampler, params, vae_params, conditions, workdir,
                          rep_side=_REP.value,
                          fresh=run_flags.OVERWRITE.value, **run)
  cal, extra = calibration.calibrate(stats, model, base), {}
  if _TARGET.value:
    evaluate = budget.ssim_evaluator(
        sampler, params, vae_params, conditions,
        run_lib.dense_images(workdir, conditions.num_samples), **run)
    # Plans an earlier search on these statistics generated (a copied
    # workdir's frontier.json) are not generated again.
    known = ({} if run_flags.OVERWRITE.value else
             budget.known_ssim(run_lib.read_frontier(workdir)))
    cal, record = budget.budget_plan(
        stats, model, base, evaluate, target=_TARGET.value,
        max_evals=_MAX_EVALS.value, text_tokens=s.text_len, known=known,
        name=run_flags.NAME.value)
    run_lib.write_frontier(workdir, record)
    extra["budget"] = dict(record, plans=None)
  flops = flops_lib.plan_flops(cal.plan, model, text_tokens=s.text_len).total
  dense = flops_lib.dense_flops(model, text_tokens=s.text_len).total
  extra.update(flops=flops, dense_flops=dense, flop_speedup=dense / flops)
  run_lib.write_report(workdir, stats, cal, mesh=mesh, extra=extra)
  logging.info("Plan %r: %.2fx fewer FLOPs -> %s", cal.plan.name,
               extra["flop_speedup"], workdir / "plan.json")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "prompts", "workdir"])
  launch.run(main)
