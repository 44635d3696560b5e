r"""Calibrates adaptive ToProVAR: a family of plans and the per-image rule.

  python -m experiments.calibrate_adaptive --config=configs/emoji.py \
    --prompts=/tmp/train_captions.txt --num_images=64 \
    --base_plan=emoji_default --out=toprovar_jax/sparsity/decisions/emoji_adaptive.json

The family is --base_plan with pruning from each scale D of --first_pruned
(default: the base plan's D up to dense, at most 4), or the plan specs of
--plans. On the prompts (training captions only) every plan finishes every
image after the shared prefix; the plan order and thresholds on each
image's mean ρ_s over --statistic_scales with the best mean SSIM vs dense
at mean FLOPs <= the budget are kept (`evaluation.branch_training`).
The spec JSON (with the record: every plan's SSIM and FLOPs, the best
single plan within the budget) is what `config.sparsity.plan =
"adaptive:PATH"` reads.
"""

import time

from absl import app
from absl import flags
from absl import logging

from experiments import launch
from experiments import run_flags
from toprovar_jax import flops as flops_lib
from toprovar_jax import io
from toprovar_jax import pipeline
from toprovar_jax.evaluation import branch_training
from toprovar_jax.sparsity import adaptive
from toprovar_jax.sparsity import named

_BASE = flags.DEFINE_string("base_plan", None, "Plan spec of the family.")
_DEPTHS = flags.DEFINE_list("first_pruned", [], "The family's D values.")
_STATS = flags.DEFINE_list("statistic_scales", [], "Scales of ρ (default: "
                           "the 3 before the decision scale).")
_BUDGET = flags.DEFINE_integer("budget_plan", -1, "Budget: FLOPs of this "
                               "family plan, cheapest first (-1: middle).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  run_flags.refuse_unused("calibrate_adaptive", "config", "prompts", "seed",
      "num_images", "batch_size", "plans", "out", "name")
  config = run_flags.CONFIG.value
  with launch.input_phase():
    base, conditions, params, vae, source, prompts = (
        pipeline.dense_run_from_prompts_file(config, run_flags.PROMPTS.value,
                                             run_flags.NUM_IMAGES.value))
  model = base.model
  if run_flags.PLANS.value:
    plans = [named.load_plan(p, model) for p in run_flags.PLANS.value]
  else:
    plan = named.load_plan(_BASE.value, model)
    first = adaptive.first_pruned(plan)
    depths = ([int(v) for v in _DEPTHS.value] or
              list(range(first, model.num_scales + 1))[:4])
    plans = adaptive.family(plan, depths, model)
  d = adaptive.first_difference(plans)
  stats = [int(s) for s in _STATS.value] or list(range(max(0, d - 3), d))
  flops = sorted(flops_lib.plan_flops(
      p, model, text_tokens=config.sampling.text_len).total for p in plans)
  budget = flops[_BUDGET.value if _BUDGET.value >= 0 else (len(plans) - 1) // 2]
  t0 = time.perf_counter()
  spec, record = branch_training.calibrate_adaptive(
      base, params, vae, conditions,
      name=(run_flags.NAME.value
            or f"{plans[0].name.split('_D')[0]}_adaptive"),
      plans=plans, decision_scale=d, statistic_scales=stats,
      budget_flops=budget, seed=run_flags.seed(config),
      batch_size=run_flags.batch_size(config),
      cfg_scale=config.sampling.cfg_scale, tau=config.sampling.tau,
      text_tokens=config.sampling.text_len)
  record.update(branch_training.provenance(
      source, run_flags.PROMPTS.value, prompts, seed=run_flags.seed(config),
      seconds=time.perf_counter() - t0))
  logging.info("Adaptive calibration: %s", record)
  io.write_json_atomic(run_flags.OUT.value, adaptive.spec_to_dict(spec, record))
  logging.info("Wrote %s (%.0f s)", run_flags.OUT.value, record["seconds"])


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "prompts", "out"])
  launch.run(main)
