r"""Trains the whole emoji model (tokenizer, then transformer) in a time budget.

One GPU command of at most 10 minutes (SPEC §8; the device machine forgets
its disk once idle for 30 s, so one command is the robust unit):

  python -m experiments.train_emoji --workdir=/tmp/emoji \
    --dataset=.carry/emoji128/emoji_128.npz \
    --captions=.carry/emoji_text.npz --out=$OUT

The defaults are the settings of the shipped weights' run on an H200
(toprovar_jax/assets/emoji/README.md); its first try, with a 45 s probe, 30 s
of reserve and a log every 50 steps, ended the tokenizer probe before its
first logged rate.

Each stage is `experiments/train.py` run twice in the same workdir:
  1. a probe of `--probe_s` seconds (compile + a few hundred warm-up steps,
     then a checkpoint) that measures steps/s;
  2. the resumed run, with `train_steps` set to what the measured rate fits
     into the rest of the stage's budget, so the cosine schedule ends exactly
     when the time does. The probe stays inside the linear warm-up, whose
     shape does not depend on the total, so changing the total after it
     changes no learning rate the probe used.
`--out` receives the exported bf16 shards of both stages, and logs.tar.gz
with each stage's results, metrics, curves and reconstructions.
"""

import json
import math
import pathlib
import shutil
import subprocess
import sys
import tarfile
import time

from absl import app
from absl import flags
from absl import logging

from toprovar_jax.training import budget

_WORKDIR = flags.DEFINE_string("workdir", None, "Holds tok/ and tf/.")
_DATASET = flags.DEFINE_string("dataset", None, "emoji_128.npz")
_CAPTIONS = flags.DEFINE_string("captions", None, "encode_captions.py npz")
_TOK_S = flags.DEFINE_float("tokenizer_s", 165.0, "Tokenizer stage seconds.")
_TF_S = flags.DEFINE_float("transformer_s", 390.0,
                           "Transformer stage seconds.")
_PROBE_S = flags.DEFINE_float("probe_s", 105.0,
                              "Seconds of the rate-measuring first run.")
_RESTART_S = flags.DEFINE_float(
    "restart_s", 20.0, "Expected start-up, restore and (cached) compile "
    "seconds of the second run, kept out of its steps.")
_MAX_STEPS = flags.DEFINE_multi_string(
    "max_steps", [], "stage=steps caps, e.g. tokenizer=4000.")
_OUT = flags.DEFINE_string("out", None, "Where exports and logs go.")
_EXTRA = flags.DEFINE_multi_string(
    "override", [], "stage:--config.x=y passed to that stage's train.py "
    "(after the defaults below, so it wins).")
# Both runs of a stage: a short reserve for the final eval / save / export,
# and a log window short enough that the probe measures a rate.
_LOOP_DEFAULTS = ("--config.loop.reserve_s=12",
                  "--config.loop.log_every_steps=20")


def _train(stage: str, workdir: pathlib.Path, budget_s: float,
           train_steps: int, extra) -> None:
  cmd = [sys.executable, "-m", "experiments.train", f"--workdir={workdir}",
         f"--config=configs/emoji_train.py:stage={stage}",
         f"--config.data.dataset={_DATASET.value}",
         f"--config.train_steps={train_steps}",
         f"--config.loop.time_budget_s={budget_s:.0f}", *_LOOP_DEFAULTS,
         *extra]
  if stage == "transformer":
    cmd += [f"--config.data.captions={_CAPTIONS.value}",
            f"--config.ckpt.tokenizer={workdir.parent / 'tok'}"]
  logging.info("%s", " ".join(cmd))
  subprocess.run(cmd, check=True)


def _stage(stage: str, budget_s: float) -> dict:
  workdir = pathlib.Path(_WORKDIR.value) / ("tok" if stage == "tokenizer"
                                            else "tf")
  caps = dict(s.split("=") for s in _MAX_STEPS.value)
  extra = [e.split(":", 1)[1] for e in _EXTRA.value
           if e.split(":", 1)[0] == stage]
  t0 = time.monotonic()
  # The probe's own total only sets its warm-up; a large one keeps the
  # schedule in warm-up whatever the rate.
  _train(stage, workdir, _PROBE_S.value, 10**6, extra)
  done, rate = budget.last_run(workdir)
  left = budget_s - (time.monotonic() - t0) - _RESTART_S.value
  steps = budget.planned_steps(done, rate, left, int(caps.get(stage, 0)))
  logging.info("%s: %d steps in the probe at %.1f steps/s -> %d steps",
               stage, done, rate, steps)
  # At least a second: a budget of 0 or less means "none" to train.py.
  _train(stage, workdir, max(budget_s - (time.monotonic() - t0), 1.0), steps,
         extra)
  end, final_rate = budget.last_run(workdir)
  return dict(stage=stage, probe_steps=done, probe_rate=rate,
              planned_steps=steps, end_step=end, final_rate=final_rate,
              wall_s=time.monotonic() - t0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  summary = [_stage("tokenizer", _TOK_S.value),
             _stage("transformer", _TF_S.value)]
  logging.info("%s", json.dumps(summary, indent=1))
  if _OUT.value:
    out = pathlib.Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    root = pathlib.Path(_WORKDIR.value)
    (root / "summary.json").write_text(json.dumps(summary, indent=1))
    for sub in ("tok", "tf"):
      for f in sorted((root / sub / "export").glob("*.*")):
        if f.is_file():
          shutil.copy(f, out / f.name)
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
      tar.add(root / "summary.json", arcname="summary.json")
      for sub in ("tok", "tf"):
        for name in ("results.json", "metrics.jsonl", "curves.json",
                     "curves.png", "reconstructions.png", "config.json"):
          if (root / sub / name).exists():
            tar.add(root / sub / name, arcname=f"{sub}/{name}")
  if not all(math.isfinite(s["final_rate"]) for s in summary):
    raise SystemExit("a stage reported no rate")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "dataset", "captions"])
  app.run(main)
