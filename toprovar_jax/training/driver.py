"""Runs of `experiments/train.py` over timed commands (experiments/train_emoji.py).

A first command trains the tokenizer, then the transformer; each stage is a
rate probe (`Driver.stage`: train.py with a short budget and a huge
`train_steps`, so the schedule stays in warm-up) and a resumed run whose
`train_steps` is what the measured rate fits into the rest of the stage plus
the seconds a later command will add (`budget.planned_steps`); a probe
whose compile ate its budget (no rate) is run again, from the compile
cache. A later
command (`Driver.resume`) continues the transformer with the stored
`train_steps` and attention settings. `collect` gathers the exports and logs
that leave the machine.

The transformer tries its attention implementations in order: one whose
probe fails (cuDNN refusing the block mask, say) is dropped for the next.
XLA attention runs with `model.remat`, since it would otherwise keep every
layer's (B, H, L, L) probabilities for the backward pass.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import subprocess
import sys
import tarfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

from absl import logging

from toprovar_jax.training import budget

STAGES = ("tokenizer", "transformer")
_SUBDIRS = {"tokenizer": "tok", "transformer": "tf"}
# Every run: a short reserve for the final eval / save / export, and a log
# window short enough that a probe measures a rate.
_LOOP_DEFAULTS = ("--config.loop.reserve_s=12",
                  "--config.loop.log_every_steps=20")
# Probes run again when the first one measured no rate.
_REPROBES = 2
_LOGS = ("results.json", "metrics.jsonl", "curves.json", "curves.png",
         "reconstructions.png", "config.json")


def impl_flags(impl: str) -> List[str]:
  """train.py flags of one attention implementation (XLA: with remat)."""
  remat = "true" if impl == "xla" else "false"
  return [f"--config.model.attn_impl={impl}", f"--config.model.remat={remat}"]


def stage_overrides(overrides: Sequence[str], stage: str) -> List[str]:
  """The `stage:--config.x=y` overrides of one stage, as train.py flags.

  Raises:
    ValueError: an override without a known `stage:` prefix.
  """
  out = []
  for item in overrides:
    name, sep, flag = item.partition(":")
    if not sep or name not in STAGES:
      raise ValueError(f"--override: {item!r} is not 'tokenizer:--flag' or "
                       "'transformer:--flag'")
    if name == stage:
      out.append(flag)
  return out


@dataclasses.dataclass(frozen=True)
class Driver:
  """One training's inputs and settings (the flags of train_emoji.py).

  Attributes:
    root: workdir holding tok/ and tf/.
    dataset, captions: build_emoji_dataset / encode_captions npz files.
    probe_s: the transformer's probe seconds, per implementation tried.
    tokenizer_probe_s: the tokenizer's probe seconds.
    restart_s: start-up, restore and (cached) compile seconds of a resumed
      run, kept out of its planned steps.
    attn_impls: transformer attention implementations, tried in order.
    caps: {stage: largest train_steps} (absent = no cap).
    overrides: `stage:--config.x=y` flags for train.py.
  """
  root: pathlib.Path
  dataset: str
  captions: str
  probe_s: float = 110.0
  tokenizer_probe_s: float = 90.0
  restart_s: float = 25.0
  attn_impls: Tuple[str, ...] = ("cudnn", "xla")
  caps: Optional[Dict[str, int]] = None
  overrides: Tuple[str, ...] = ()

  def workdir(self, stage: str) -> pathlib.Path:
    return pathlib.Path(self.root) / _SUBDIRS[stage]

  def train(self, stage: str, budget_s: float, train_steps: int,
            extra: Sequence[str], check: bool = True) -> bool:
    """One train.py run; True if it exited 0 (raises if not and `check`)."""
    cmd = [sys.executable, "-m", "experiments.train",
           f"--workdir={self.workdir(stage)}",
           f"--config=configs/emoji_train.py:stage={stage}",
           f"--config.data.dataset={self.dataset}",
           f"--config.train_steps={train_steps}",
           f"--config.loop.time_budget_s={max(budget_s, 1.0):.0f}",
           *_LOOP_DEFAULTS, *extra]
    if stage == "transformer":
      cmd += [f"--config.data.captions={self.captions}",
              f"--config.ckpt.tokenizer={self.workdir('tokenizer')}"]
    logging.info("%s", " ".join(cmd))
    return subprocess.run(cmd, check=check).returncode == 0

  def stage(self, stage: str, budget_s: float, later_s: float = 0.0) -> dict:
    """Probe, plan and train one stage in `budget_s` seconds.

    Args:
      stage: 'tokenizer' or 'transformer'.
      budget_s: seconds of this stage in this command.
      later_s: seconds a later `resume` command will train it, planned into
        the schedule now.

    Returns:
      A summary: attention, probe steps and rate, planned and end steps,
      the final rate, wall seconds.
    """
    t0 = time.monotonic()
    extra = stage_overrides(self.overrides, stage)
    impls = list(self.attn_impls) if stage == "transformer" else [None]
    for i, impl in enumerate(impls):
      run_extra = (impl_flags(impl) if impl else []) + extra
      probe_s = self.probe_s if impl else self.tokenizer_probe_s
      # A huge total keeps the probe's schedule in warm-up whatever the
      # rate. The last implementation must work.
      if self.train(stage, probe_s, 10**6, run_extra,
                    check=i == len(impls) - 1):
        break
      logging.warning("%s probe with attention %r failed; next: %r", stage,
                      impl, impls[i + 1])
    done, rate = budget.last_run(self.workdir(stage))
    for _ in range(_REPROBES):
      # A compile longer than the probe leaves no logged window, hence no
      # rate (v1's first GPU try planned 2 steps so). The compile is cached
      # now: probing again costs the start-up and the steps only.
      left = budget_s - (time.monotonic() - t0)
      if rate > 0 or left < probe_s:
        break
      logging.warning("%s probe measured no rate; probing again (%.0f s "
                      "left)", stage, left)
      self.train(stage, min(probe_s, left / 2), 10**6, run_extra)
      done, rate = budget.last_run(self.workdir(stage))
    left = budget_s - (time.monotonic() - t0) - self.restart_s
    if later_s > 0:
      left += later_s - self.restart_s
    steps = budget.planned_steps(done, rate, left,
                                 int((self.caps or {}).get(stage, 0)))
    logging.info("%s: %d steps in the probe at %.1f steps/s -> %d steps",
                 stage, done, rate, steps)
    self.train(stage, budget_s - (time.monotonic() - t0), steps, run_extra)
    end, final_rate = budget.last_run(self.workdir(stage))
    return dict(stage=stage, attn_impl=impl, probe_steps=done,
                probe_rate=rate, planned_steps=steps, end_step=end,
                final_rate=final_rate, wall_s=time.monotonic() - t0)

  def resume(self, budget_s: float) -> dict:
    """Continues the transformer with its stored schedule and attention.

    Raises:
      FileNotFoundError: no transformer run in the workdir (a fresh machine).
    """
    t0, workdir = time.monotonic(), self.workdir("transformer")
    steps = budget.stored_train_steps(workdir)
    start, _ = budget.last_run(workdir)
    impl = json.loads((workdir / "config.json").read_text())["model"][
        "attn_impl"]
    self.train("transformer", budget_s, steps, impl_flags(impl)
               + stage_overrides(self.overrides, "transformer"))
    end, rate = budget.last_run(workdir)
    return dict(stage="transformer", resumed_from=start, planned_steps=steps,
                attn_impl=impl, end_step=end, final_rate=rate,
                wall_s=time.monotonic() - t0)


def collect(root: pathlib.Path, out: pathlib.Path, summary) -> None:
  """Both stages' exports and logs.tar.gz (each stage's logs) into `out`."""
  root, out = pathlib.Path(root), pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  (root / "summary.json").write_text(json.dumps(summary, indent=1))
  for sub in _SUBDIRS.values():
    for f in sorted((root / sub / "export").glob("*.*")):
      if f.is_file():
        shutil.copy(f, out / f.name)
  with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
    tar.add(root / "summary.json", arcname="summary.json")
    for sub in _SUBDIRS.values():
      for name in _LOGS:
        if (root / sub / name).exists():
          tar.add(root / sub / name, arcname=f"{sub}/{name}")
