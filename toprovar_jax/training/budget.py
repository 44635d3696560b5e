"""Fitting a training run into a wall-clock budget (experiments/train_emoji.py).

A stage first runs a short probe that measures steps/s; `planned_steps` then
turns the measured rate and the seconds left (in this command and in the
commands that will resume it) into the total `train_steps` of the resumed
run, so that its cosine schedule ends with the budget. A later command reads
that total back (`stored_train_steps`) and continues the same schedule.
"""

from __future__ import annotations

import json
import pathlib


def last_run(workdir: pathlib.Path) -> tuple[int, float]:
  """(end step, steps/s) of the last run in a train.py results.json."""
  runs = json.loads((workdir / "results.json").read_text())["runs"]
  return int(runs[-1]["end_step"]), float(runs[-1]["steps_per_sec"])


def planned_steps(done: int, rate: float, seconds_left: float,
                  cap: int = 0) -> int:
  """Total steps that `seconds_left` more seconds at `rate` steps/s reach.

  At least one more step than `done` (a probe that measured no rate, or a
  budget already spent, still ends with a short resumed run that exports),
  and at most `cap` when it is positive.
  """
  steps = done + max(int(max(seconds_left, 0.0) * rate), 1)
  return min(steps, cap) if cap > 0 else steps


def stored_train_steps(workdir: pathlib.Path) -> int:
  """`train_steps` of the run in `workdir` (its train.py config.json).

  Raises:
    FileNotFoundError: no run there (e.g. the GPU machine was given back
      between two commands and its disk is gone); the message says so.
  """
  path = pathlib.Path(workdir) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(
        f"{path}: no training run to resume here (a fresh machine, or a "
        "first command that did not reach this stage)")
  return int(json.loads(path.read_text())["train_steps"])
