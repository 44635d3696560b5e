r"""Trains the emoji model (tokenizer, then transformer) over timed commands.

GPU commands last at most 10 minutes and the machine keeps its disk between
the commands of one lease, so the training is two commands
(scripts/train_emoji_gpu.sh holds them exactly):

  # 1: tokenizer, then the transformer's probe and the first part of it;
  #    the cosine schedule is planned over this command and the next one.
  python -m experiments.train_emoji --workdir=/tmp/emoji \
    --dataset=.carry/emoji128/emoji_128.npz \
    --captions=.carry/emoji_text.npz --tokenizer_s=210 --transformer_s=300 \
    --later_s=430 --out=$OUT
  # 2: the rest of the same schedule (no probe).
  python -m experiments.train_emoji --workdir=/tmp/emoji --resume \
    --dataset=... --captions=... --transformer_s=430 --out=$OUT

Each stage of a first command is `experiments/train.py` run twice in one
workdir (`toprovar_jax.training.driver`):
  1. a probe of `--tokenizer_probe_s` / `--probe_s` seconds (compile +
     warm-up steps, then a checkpoint) that measures steps/s;
  2. the resumed run, with `train_steps` set to what the measured rate fits
     into the rest of the stage's budget plus `--later_s` (minus a
     `--restart_s` start-up for the later command), so the cosine schedule
     ends when the last command does. The probe runs in the linear warm-up,
     whose shape does not depend on the total.
The transformer tries the attention implementations of `--attn_impls` in
order: one whose probe fails (e.g. cuDNN refusing the block mask) is
dropped for the next; 'xla' runs with `model.remat` (it would keep every
layer's (B, H, L, L) probabilities), the others without.
`--resume` runs the transformer stage only, for `--transformer_s` seconds,
with the stored `train_steps` and attention settings.
`--out` receives the exported bf16 shards of both stages, and logs.tar.gz
with each stage's results, metrics, curves and reconstructions.
"""

import math
import pathlib

from absl import app
from absl import flags
from absl import logging

from toprovar_jax.training import driver as driver_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Holds tok/ and tf/.")
_DATASET = flags.DEFINE_string("dataset", None, "emoji_128.npz")
_CAPTIONS = flags.DEFINE_string("captions", None, "encode_captions.py npz")
_TOK_S = flags.DEFINE_float("tokenizer_s", 210.0, "Tokenizer stage seconds.")
_TF_S = flags.DEFINE_float("transformer_s", 300.0,
                           "Transformer seconds in this command.")
_LATER_S = flags.DEFINE_float(
    "later_s", 0.0, "Transformer seconds of the --resume command to come, "
    "planned into the schedule now.")
_RESUME = flags.DEFINE_bool("resume", False, "Continue the transformer "
                            "stage of --workdir with its stored schedule.")
_PROBE_S = flags.DEFINE_float(
    "probe_s", 110.0, "Seconds of the transformer's rate-measuring first "
    "run (per attention implementation tried).")
_TOK_PROBE_S = flags.DEFINE_float(
    "tokenizer_probe_s", 90.0, "Seconds of the tokenizer's first run.")
_RESTART_S = flags.DEFINE_float(
    "restart_s", 25.0, "Expected start-up, restore and (cached) compile "
    "seconds of a resumed run, kept out of its steps.")
_IMPLS = flags.DEFINE_list("attn_impls", ["cudnn", "xla"], "Transformer "
                           "attention implementations, tried in order.")
_MAX_STEPS = flags.DEFINE_multi_string(
    "max_steps", [], "stage=steps caps, e.g. tokenizer=4000.")
_OUT = flags.DEFINE_string("out", None, "Where exports and logs go.")
_EXTRA = flags.DEFINE_multi_string(
    "override", [], "stage:--config.x=y passed to that stage's train.py "
    "(after the defaults, so it wins).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  driver = driver_lib.Driver(
      root=pathlib.Path(_WORKDIR.value), dataset=_DATASET.value,
      captions=_CAPTIONS.value, probe_s=_PROBE_S.value,
      tokenizer_probe_s=_TOK_PROBE_S.value, restart_s=_RESTART_S.value,
      attn_impls=tuple(_IMPLS.value),
      caps={k: int(v) for k, v in (s.split("=") for s in _MAX_STEPS.value)},
      overrides=tuple(_EXTRA.value))
  if _RESUME.value:
    summary = [driver.resume(_TF_S.value)]
  else:
    summary = [driver.stage("tokenizer", _TOK_S.value),
               driver.stage("transformer", _TF_S.value, _LATER_S.value)]
  logging.info("%s", summary)
  if _OUT.value:
    driver_lib.collect(driver.root, pathlib.Path(_OUT.value), summary)
  if not all(math.isfinite(s["final_rate"]) for s in summary):
    raise SystemExit("a stage reported no rate")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "dataset", "captions"])
  app.run(main)
