r"""Trains the emoji model (tokenizer, then transformer) over timed commands.

GPU commands last at most 10 minutes and the machine keeps its disk between
the commands of one lease, so the training is two commands
(scripts/train_emoji_gpu.sh holds them exactly):

  # 1: tokenizer, then the transformer's probe and the first part of it;
  #    the cosine schedule is planned over this command and the next one.
  python -m experiments.train_emoji --workdir=/tmp/emoji \
    --dataset=.carry/emoji128/emoji_128.npz \
    --captions=.carry/emoji_text.npz --tokenizer_s=200 --transformer_s=300 \
    --later_s=440 --out=$OUT
  # 2: the rest of the same schedule (no probe).
  python -m experiments.train_emoji --workdir=/tmp/emoji --resume \
    --dataset=... --captions=... --transformer_s=440 --out=$OUT

Each stage of a first command is `experiments/train.py` run twice in one
workdir:
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
_TOK_S = flags.DEFINE_float("tokenizer_s", 200.0, "Tokenizer stage seconds.")
_TF_S = flags.DEFINE_float("transformer_s", 300.0,
                           "Transformer seconds in this command.")
_LATER_S = flags.DEFINE_float(
    "later_s", 0.0, "Transformer seconds of the --resume command to come, "
    "planned into the schedule now.")
_RESUME = flags.DEFINE_bool("resume", False, "Continue the transformer "
                            "stage of --workdir with its stored schedule.")
_PROBE_S = flags.DEFINE_float(
    "probe_s", 100.0, "Seconds of the transformer's rate-measuring first "
    "run (per attention implementation tried).")
_TOK_PROBE_S = flags.DEFINE_float(
    "tokenizer_probe_s", 70.0, "Seconds of the tokenizer's first run.")
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
    "(after the defaults below, so it wins).")
# Every run: a short reserve for the final eval / save / export, and a log
# window short enough that the probe measures a rate.
_LOOP_DEFAULTS = ("--config.loop.reserve_s=12",
                  "--config.loop.log_every_steps=20")


def _impl_flags(impl: str) -> list:
  remat = "true" if impl == "xla" else "false"
  return [f"--config.model.attn_impl={impl}", f"--config.model.remat={remat}"]


def _train(stage: str, workdir: pathlib.Path, budget_s: float,
           train_steps: int, extra, check=True) -> bool:
  cmd = [sys.executable, "-m", "experiments.train", f"--workdir={workdir}",
         f"--config=configs/emoji_train.py:stage={stage}",
         f"--config.data.dataset={_DATASET.value}",
         f"--config.train_steps={train_steps}",
         f"--config.loop.time_budget_s={max(budget_s, 1.0):.0f}",
         *_LOOP_DEFAULTS, *extra]
  if stage == "transformer":
    cmd += [f"--config.data.captions={_CAPTIONS.value}",
            f"--config.ckpt.tokenizer={workdir.parent / 'tok'}"]
  logging.info("%s", " ".join(cmd))
  return subprocess.run(cmd, check=check).returncode == 0


def _stage(stage: str, budget_s: float, later_s: float = 0.0) -> dict:
  workdir = pathlib.Path(_WORKDIR.value) / ("tok" if stage == "tokenizer"
                                            else "tf")
  caps = dict(s.split("=") for s in _MAX_STEPS.value)
  extra = [e.split(":", 1)[1] for e in _EXTRA.value
           if e.split(":", 1)[0] == stage]
  t0 = time.monotonic()
  impls = [None] if stage == "tokenizer" else list(_IMPLS.value)
  for i, impl in enumerate(impls):
    run_extra = (_impl_flags(impl) if impl else []) + extra
    # The probe's own total only sets its warm-up; a large one keeps the
    # schedule in warm-up whatever the rate. The last choice must work.
    probe_s = _PROBE_S.value if impl else _TOK_PROBE_S.value
    if _train(stage, workdir, probe_s, 10**6, run_extra,
              check=i == len(impls) - 1):
      break
    logging.warning("%s probe with attention %r failed; next: %r", stage,
                    impl, impls[i + 1])
  done, rate = budget.last_run(workdir)
  left = budget_s - (time.monotonic() - t0) - _RESTART_S.value
  if later_s > 0:
    left += later_s - _RESTART_S.value
  steps = budget.planned_steps(done, rate, left, int(caps.get(stage, 0)))
  logging.info("%s: %d steps in the probe at %.1f steps/s -> %d steps",
               stage, done, rate, steps)
  _train(stage, workdir, budget_s - (time.monotonic() - t0), steps,
         run_extra)
  end, final_rate = budget.last_run(workdir)
  return dict(stage=stage, attn_impl=impl, probe_steps=done, probe_rate=rate,
              planned_steps=steps, end_step=end, final_rate=final_rate,
              wall_s=time.monotonic() - t0)


def _resume() -> dict:
  workdir = pathlib.Path(_WORKDIR.value) / "tf"
  t0, steps = time.monotonic(), budget.stored_train_steps(workdir)
  start, _ = budget.last_run(workdir)
  model = json.loads((workdir / "config.json").read_text())["model"]
  extra = [e.split(":", 1)[1] for e in _EXTRA.value
           if e.split(":", 1)[0] == "transformer"]
  _train("transformer", workdir, _TF_S.value, steps,
         _impl_flags(model["attn_impl"]) + extra)
  end, rate = budget.last_run(workdir)
  return dict(stage="transformer", resumed_from=start, planned_steps=steps,
              attn_impl=model["attn_impl"], end_step=end, final_rate=rate,
              wall_s=time.monotonic() - t0)


def _collect(root: pathlib.Path, out: pathlib.Path, summary) -> None:
  """Exports (both stages) and logs.tar.gz into `out`."""
  out.mkdir(parents=True, exist_ok=True)
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _RESUME.value:
    summary = [_resume()]
  else:
    summary = [_stage("tokenizer", _TOK_S.value),
               _stage("transformer", _TF_S.value, _LATER_S.value)]
  logging.info("%s", json.dumps(summary, indent=1))
  if _OUT.value:
    _collect(pathlib.Path(_WORKDIR.value), pathlib.Path(_OUT.value), summary)
  if not all(math.isfinite(s["final_rate"]) for s in summary):
    raise SystemExit("a stage reported no rate")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "dataset", "captions"])
  app.run(main)
