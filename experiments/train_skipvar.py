r"""Trains SkipVAR's decision classifier on a model's own samples (SPEC §6).

  python -m experiments.train_skipvar --config=configs/emoji.py \
    --prompts=/tmp/train_captions.txt --num_images=64 \
    --out=toprovar_jax/sparsity/decisions/emoji_skipvar.json

On the prompts (training captions only), every action of --classes (e.g.
skip the last 0-3 scales) finishes every image after the shared prefix;
an image's label is the cheapest action whose SSIM vs dense reaches
--ssim_target, and a logistic regression on HF_Diff / HF_Ratio (small
decodes at the decision scale) learns it (`evaluation.branch_training`).
Writes the classifier JSON (`sparsity.classifier`, with the training record
under "training"), which `config.sparsity.plan = "skipvar"` reads from
toprovar_jax/sparsity/decisions/<model>_skipvar.json (or "skipvar:PATH").
"""

import time

from absl import app
from absl import flags
from absl import logging

from experiments import launch
from experiments import run_flags
from toprovar_jax import io
from toprovar_jax import pipeline
from toprovar_jax.evaluation import branch_training
from toprovar_jax.sparsity import classifier

_CLASSES = flags.DEFINE_list(
    "classes", ["skipvar_skip0", "skipvar_skip1", "skipvar_skip2",
                "skipvar_skip3"], "The actions (plan names / specs).")
_DECISION = flags.DEFINE_integer("decision_scale", 0, "d (0 = S - 3).")
_FEATURE = flags.DEFINE_integer("feature_scale", -1, "Scale of the small "
                                "decodes (-1 = side nearest final / 8).")
_TARGET = flags.DEFINE_float("ssim_target", 0.85, "SSIM an action must keep.")
_C = flags.DEFINE_float("c", 1.0, "Inverse L2 strength (sklearn's C).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  run_flags.refuse_unused("train_skipvar", "config", "prompts", "seed",
      "num_images", "batch_size", "out")
  config = run_flags.CONFIG.value
  with launch.input_phase():
    base, conditions, params, vae, source, prompts = (
        pipeline.dense_run_from_prompts_file(config, run_flags.PROMPTS.value,
                                             run_flags.NUM_IMAGES.value))
  model = base.model
  t0 = time.perf_counter()
  spec, record = branch_training.train_skipvar(
      base, params, vae, conditions, classes=_CLASSES.value,
      decision_scale=(_DECISION.value or
                      classifier.default_decision_scale(model.num_scales)),
      feature_scale=(_FEATURE.value if _FEATURE.value >= 0 else
                     classifier.default_feature_scale(model.schedule)),
      ssim_target=_TARGET.value, c=_C.value, seed=run_flags.seed(config),
      batch_size=run_flags.batch_size(config),
      cfg_scale=config.sampling.cfg_scale,
      tau=config.sampling.tau, text_tokens=config.sampling.text_len)
  record.update(branch_training.provenance(
      source, run_flags.PROMPTS.value, prompts, seed=run_flags.seed(config),
      seconds=time.perf_counter() - t0))
  logging.info("SkipVAR classifier: %s", record)
  io.write_json_atomic(run_flags.OUT.value,
                       classifier.spec_to_dict(spec, dict(training=record)))
  logging.info("Wrote %s (%.0f s)", run_flags.OUT.value, record["seconds"])


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "prompts", "out"])
  launch.run(main)
