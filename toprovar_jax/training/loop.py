"""A resumable training loop for a series of time-limited commands.

On the GPU machine a command may run for at most 10 minutes, and the disk
persists between the commands of one lease. So one `run` call is one command:

  1. resume from the latest orbax checkpoint in `workdir/checkpoints`
     (or initialise a fresh state);
  2. train until `num_steps`, or until the wall-clock budget is nearly spent
     (`time_budget_s` minus `reserve_s` for the final save and export);
  3. save a checkpoint (every `checkpoint_every_steps`, and at the end),
     keeping the last `keep_checkpoints`;
  4. append metrics to `workdir/metrics.jsonl`, log steps/s, the share of
     time spent waiting for host batches (`data_wait`) and the ETA, and
     write `curves.json` / `curves.png` (`training.curves`);
  5. export the params as bf16 `.npz` shards of at most 16 MiB each plus a
     `manifest.json` (`weights.shards.write_shards`), the files that leave
     the machine.

Rerunning the same command continues where the last one stopped. Batches and
step keys depend only on the step (`batch_fn(step)`; train steps fold
`state.step` into the key), so an interrupted run and an uninterrupted one
reach the same parameters (tests/training/loop_test.py).

The state is any pytree with an integer `step` leaf, normally a
`training.transformer.TrainState` (step, params, opt_state).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence
from typing import Tuple, Union

from absl import logging
import flax.traverse_util
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp

from toprovar_jax import io
from toprovar_jax.training import curves as curves_lib
from toprovar_jax.weights import shards

PathLike = Union[str, os.PathLike]
Metrics = Dict[str, Any]

MiB = 1 << 20
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "export"


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoopConfig:
  """Static settings of `run`.

  Attributes:
    num_steps: train until `state.step` reaches this (over all runs).
    checkpoint_every_steps: save whenever the step is a multiple of this.
    log_every_steps: average metrics over this many steps, log and append
      them to metrics.jsonl; also the host-device sync interval.
    eval_every_steps: call `eval_fn` at these multiples (0 = only at the end
      of each run).
    keep_checkpoints: orbax `max_to_keep`.
    time_budget_s: wall-clock budget of this run from `start_time`, in
      seconds (0 = none); the run stops early enough to save and export
      within it.
    reserve_s: seconds kept back for the final eval, save, curves and export.
    prefetch: batches prepared ahead in background threads.
    export_max_bytes: largest export shard, in bytes.
  """
  num_steps: int
  checkpoint_every_steps: int = 1000
  log_every_steps: int = 50
  eval_every_steps: int = 0
  keep_checkpoints: int = 2
  time_budget_s: float = 0.0
  reserve_s: float = 30.0
  prefetch: int = 2
  export_max_bytes: int = 16 * MiB

  def __post_init__(self):
    for name in ("num_steps", "checkpoint_every_steps", "log_every_steps",
                 "keep_checkpoints"):
      if getattr(self, name) < 1:
        raise ValueError(f"LoopConfig.{name}: must be >= 1, got "
                         f"{getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class RunResult:
  """What one `run` call did.

  Attributes:
    state: the final state (on device).
    start_step: the step this run resumed from (0 for a fresh start).
    end_step: the step it stopped at.
    stopped_by: 'done' (reached num_steps) or 'time_budget'.
    steps_per_sec: training throughput after compilation (0 if unmeasured).
    compile_s: wall time of the first step (compilation included).
    wall_s: wall time of the whole call.
    eval_metrics: the last evaluation ({} without `eval_fn`).
    export_files: paths written by the export (manifest last).
  """
  state: Any
  start_step: int
  end_step: int
  stopped_by: str
  steps_per_sec: float
  compile_s: float
  wall_s: float
  eval_metrics: Dict[str, float]
  export_files: Tuple[str, ...]


# -----------------------------------------------------------------------------
# Optimiser.
# -----------------------------------------------------------------------------


def make_optimizer(*, learning_rate: float, total_steps: int,
                   warmup_steps: int, end_lr_frac: float = 0.0,
                   weight_decay: float = 0.0, b1: float = 0.9,
                   b2: float = 0.95, grad_clip: float = 0.0
                   ) -> Tuple[optax.GradientTransformation,
                              optax.Schedule]:
  """AdamW with linear warmup then cosine decay, optional global-norm clip.

  Weight decay applies to matrices and convolution kernels only (ndim >= 2),
  not to biases, norm scales or embeddings-as-vectors.

  Args:
    learning_rate: peak learning rate.
    total_steps: length of the schedule (warmup included).
    warmup_steps: linear warmup from 0.
    end_lr_frac: final learning rate as a fraction of the peak.
    weight_decay: decoupled weight decay.
    b1, b2: Adam moments.
    grad_clip: clip the global gradient norm to this (0 = off).

  Returns:
    (tx, schedule): the transformation and the step -> lr function.
  """
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=learning_rate,
      warmup_steps=max(1, min(warmup_steps, total_steps - 1)),
      decay_steps=max(total_steps, 2),
      end_value=learning_rate * end_lr_frac)
  decay_mask = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)  # noqa: E731
  parts = []
  if grad_clip > 0:
    parts.append(optax.clip_by_global_norm(grad_clip))
  parts.append(optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay,
                           mask=decay_mask))
  return optax.chain(*parts), schedule


# -----------------------------------------------------------------------------
# Workdir bookkeeping.
# -----------------------------------------------------------------------------


def check_resume_config(workdir: PathLike, config: Mapping[str, Any], *,
                        mutable: Sequence[str] = ()) -> pathlib.Path:
  """Refuses to resume a workdir that was trained with another config.

  The first run writes `workdir/config.json`; later runs must match it except
  in the `mutable` keys: dotted paths such as 'train_steps', or a group such
  as 'loop' for every key under it (settings that may change between the
  commands of one training). The file is then rewritten with the current
  config.

  Args:
    workdir: the run folder (created if missing).
    config: the resolved config as a nested dict (`ConfigDict.to_dict()`).
    mutable: dotted keys allowed to differ.

  Returns:
    The workdir as an absolute path.

  Raises:
    ValueError: the stored config differs in other keys (all listed).
  """
  workdir = pathlib.Path(workdir).expanduser().absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / "config.json"
  current = json.loads(json.dumps(dict(config), default=list))
  if path.exists():
    old = flax.traverse_util.flatten_dict(json.loads(path.read_text()),
                                          sep=".")
    new = flax.traverse_util.flatten_dict(current, sep=".")
    free = lambda k: any(k == m or k.startswith(m + ".")  # noqa: E731
                         for m in mutable)
    diff = sorted(k for k in set(old) | set(new)
                  if not free(k) and old.get(k) != new.get(k))
    if diff:
      shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
                        for k in diff[:8])
      raise ValueError(
          f"workdir {str(workdir)!r} holds a run with another config "
          f"({shown}); use a new --workdir, or change only {sorted(mutable)}")
  io.write_json_atomic(path, current)
  return workdir


def append_results(workdir: PathLike, result: RunResult,
                   **fields: Any) -> pathlib.Path:
  """Adds this run to `workdir/results.json` ({..., "runs": [...]}).

  Args:
    workdir: the run folder.
    result: what `run` returned.
    **fields: top-level fields to set (stage, variant, ...).

  Returns:
    The path written (atomically).
  """
  path = pathlib.Path(workdir) / "results.json"
  old = json.loads(path.read_text()) if path.exists() else {}
  runs = old.get("runs", []) + [dict(
      start_step=result.start_step, end_step=result.end_step,
      stopped_by=result.stopped_by,
      steps_per_sec=round(result.steps_per_sec, 4),
      compile_s=round(result.compile_s, 2), wall_s=round(result.wall_s, 2),
      eval={k: (v if math.isfinite(v) else None)
            for k, v in result.eval_metrics.items()},
      export=[os.path.basename(p) for p in result.export_files],
      device=str(jax.devices()[0]), jax=jax.__version__)]
  return io.write_json_atomic(path, dict(old, **fields, step=result.end_step,
                                         runs=runs))


def _format_s(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _mean_metrics(window: List[Metrics]) -> Dict[str, float]:
  host = jax.device_get(window)
  return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


# -----------------------------------------------------------------------------
# The loop.
# -----------------------------------------------------------------------------


class _Prefetcher:
  """`batch_fn(step)` for the next steps, computed in background threads.

  Batches depend only on the step, so prefetching never changes results.
  """

  def __init__(self, batch_fn: Callable[[int], Any], start: int, end: int,
               depth: int):
    self._fn = lambda s: jax.device_put(batch_fn(s))
    self._end = end
    self._next = start
    self._depth = max(depth, 0)
    self._pool = (concurrent.futures.ThreadPoolExecutor(max(depth, 1))
                  if depth > 0 else None)
    self._pending: Dict[int, concurrent.futures.Future] = {}

  def get(self, step: int) -> Any:
    if self._pool is None:
      return self._fn(step)
    while self._next < min(step + 1 + self._depth, self._end):
      self._pending[self._next] = self._pool.submit(self._fn, self._next)
      self._next += 1
    return self._pending.pop(step).result()

  def close(self) -> None:
    if self._pool is not None:
      for f in self._pending.values():
        f.cancel()
      self._pool.shutdown(wait=True)


def run(*, workdir: PathLike, init_fn: Callable[[], Any],
        train_step: Callable[[Any, Any, jax.Array], Tuple[Any, Metrics]],
        batch_fn: Callable[[int], Any], rng: jax.Array, config: LoopConfig,
        eval_fn: Optional[Callable[[Any], Mapping[str, float]]] = None,
        learning_rate_fn: Optional[Callable[[int], Any]] = None,
        export_fn: Optional[Callable[[Any], Any]] = None,
        export_name: str = "params", frozen: Any = None,
        start_time: Optional[float] = None) -> RunResult:
  """Resumes (or starts) training and runs until done or out of time.

  Args:
    workdir: run folder; holds checkpoints/, metrics.jsonl, curves.*,
      export/.
    init_fn: () -> fresh state. Jitted and called only when there is no
      checkpoint; otherwise its `jax.eval_shape` is the restore target.
    train_step: `(state, batch, rng, frozen) -> (state, metrics)`, not yet
      jitted (jitted here, donating the state); metrics are scalars. The
      same `rng` is passed every step: fold `state.step` in for per-step
      randomness.
    batch_fn: step -> batch (numpy pytree), deterministic in the step.
    rng: the base PRNG key.
    config: loop settings.
    eval_fn: state -> {name: float}, logged as `eval/<name>`.
    learning_rate_fn: step -> lr, logged as `lr`.
    export_fn: state -> nested dict of arrays to export (None: no export).
    export_name: file prefix of the export.
    frozen: arrays every step reads but never changes (e.g. the tokenizer
      params of the transformer stage), passed as a jit argument rather than
      closed over, which would bake them into the program as constants.
    start_time: `time.monotonic()` the budget counts from (default: now);
      pass the process start so that imports and data loading count too.

  Returns:
    A RunResult.
  """
  t_call = time.monotonic()
  start_time = t_call if start_time is None else start_time
  deadline = (start_time + config.time_budget_s if config.time_budget_s > 0
              else math.inf)
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  metrics_path = workdir / METRICS_FILE
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints, create=True)
  manager = ocp.CheckpointManager(workdir / CHECKPOINT_DIR, options=options)

  # ---- resume ---------------------------------------------------------------
  latest = manager.latest_step()
  if latest is not None:
    abstract = jax.eval_shape(init_fn)
    state = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
    logging.info("Resumed from %s at step %d.", workdir / CHECKPOINT_DIR,
                 latest)
  else:
    state = jax.jit(init_fn)()  # one compile instead of op-by-op dispatch
  start_step = int(jax.device_get(state.step))
  curves_lib.truncate_metrics(metrics_path, start_step)
  end = config.num_steps
  logging.info("Training steps %d -> %d; budget %s, %.0f s used so far (%.0f "
               "s of it to %s the state).", start_step, end,
               _format_s(config.time_budget_s) if config.time_budget_s
               else "none", time.monotonic() - start_time,
               time.monotonic() - t_call,
               "restore" if latest is not None else "initialise")

  step_fn = jax.jit(train_step, donate_argnums=(0,))
  prefetcher = _Prefetcher(batch_fn, start_step, end, config.prefetch)
  step = start_step
  stopped_by = "done"
  window: List[Metrics] = []
  t_window, window_start = time.monotonic(), step
  data_wait = 0.0  # seconds spent waiting for batches in this window
  sec_per_step = math.nan  # measured after the first (compiling) step
  steps_per_sec = 0.0
  compile_s = 0.0
  eval_metrics: Dict[str, float] = {}
  last_saved = latest
  last_eval = -1

  def do_eval():
    nonlocal eval_metrics, last_eval
    t0 = time.monotonic()
    eval_metrics = {k: float(v) for k, v in eval_fn(state).items()}
    last_eval = step
    curves_lib.append_metrics(metrics_path, dict(
        step=step, **{f"eval/{k}": v for k, v in eval_metrics.items()}))
    logging.info("step %d eval (%.1f s): %s", step, time.monotonic() - t0,
                 ", ".join(f"{k}={v:.4g}" for k, v in eval_metrics.items()))

  def save():
    nonlocal last_saved
    if last_saved != step:
      manager.save(step, args=ocp.args.StandardSave(state), force=True)
      last_saved = step

  try:
    while step < end:
      # ---- budget: stop while the final save and export still fit --------
      if math.isfinite(deadline):
        ahead = step - window_start + 1  # steps dispatched but not synced
        need = config.reserve_s + (0 if math.isnan(sec_per_step)
                                   else ahead * sec_per_step)
        if time.monotonic() + need > deadline:
          stopped_by = "time_budget"
          logging.warning("Time budget: stopping at step %d of %d (%.0f s "
                          "left, %.0f s reserved).", step, end,
                          deadline - time.monotonic(), need)
          break

      t_data = time.monotonic()
      batch = prefetcher.get(step)
      data_wait += time.monotonic() - t_data
      state, metrics = step_fn(state, batch, rng, frozen)
      step += 1
      window.append(metrics)

      if step == start_step + 1:
        # Compilation: time it and keep it out of steps/s (its metrics stay
        # in the window).
        jax.block_until_ready(state)
        compile_s = time.monotonic() - t_window
        logging.info("First step (compile included): %.1f s.", compile_s)
        t_window, window_start, data_wait = time.monotonic(), step, 0.0

      if step % config.log_every_steps == 0 or step == end:
        row = _mean_metrics(window)  # syncs with the device
        if not all(map(math.isfinite, row.values())):
          # Stop before a non-finite state is saved over the good ones.
          raise FloatingPointError(
              f"step {step}: non-finite metrics {row}; rerun resumes from "
              f"checkpoint {last_saved} (lower the learning rate?)")
        now = time.monotonic()
        timed = step - window_start
        if timed > 0:
          sec_per_step = (now - t_window) / timed
          steps_per_sec = 1.0 / sec_per_step
        # Share of the window the loop waited for batches: near 0 when the
        # device is the bottleneck, large when the host augmentation is.
        wait = data_wait / max(now - t_window, 1e-9) if timed > 0 else None
        out = dict(step=step, **{f"train/{k}": v for k, v in row.items()},
                   steps_per_sec=steps_per_sec if timed > 0 else None,
                   data_wait=wait)
        if learning_rate_fn is not None:
          out["lr"] = float(learning_rate_fn(step))
        curves_lib.append_metrics(metrics_path, out)
        eta = (end - step) * sec_per_step
        budget_left = deadline - now - config.reserve_s
        stop_near = end if not (timed and math.isfinite(deadline)) else min(
            end, step + int(max(budget_left, 0.0) * steps_per_sec))
        logging.info(
            "step %d/%d  %s  | %.2f steps/s, data wait %s | ETA %s%s", step,
            end, "  ".join(f"{k}={v:.4g}" for k, v in row.items()),
            steps_per_sec, "?" if wait is None else f"{wait:.0%}",
            _format_s(eta),
            f" (the budget stops this run near step {stop_near}; "
            f"{end - stop_near} steps for later runs)"
            if stop_near < end else "")
        window, t_window, window_start, data_wait = [], now, step, 0.0

      t_pause = time.monotonic()
      if eval_fn is not None and config.eval_every_steps and (
          step % config.eval_every_steps == 0):
        do_eval()
      if step % config.checkpoint_every_steps == 0:
        save()
        curves_lib.write_curves(workdir)
      # Eval and saving are not training time: keep them out of steps/s.
      t_window += time.monotonic() - t_pause
  finally:
    prefetcher.close()

  # ---- end of run: eval, save, curves, export ----------------------------
  if window:
    row = _mean_metrics(window)
    if step % config.log_every_steps:  # not logged yet
      curves_lib.append_metrics(metrics_path, dict(
          step=step, **{f"train/{k}": v for k, v in row.items()}))
  if eval_fn is not None and last_eval != step and step > start_step:
    do_eval()
  save()
  manager.wait_until_finished()
  manager.close()
  curves_lib.write_curves(workdir)
  export_files = ()
  if export_fn is not None:
    export_files = tuple(str(p) for p in shards.write_shards(
        workdir / EXPORT_DIR, export_fn(state), name=export_name, step=step,
        max_bytes=config.export_max_bytes))
  wall = time.monotonic() - t_call
  logging.info("Run finished at step %d (%s) in %s; total since start %s.",
               step, stopped_by, _format_s(wall),
               _format_s(time.monotonic() - start_time))
  return RunResult(state=state, start_step=start_step, end_step=step,
                   stopped_by=stopped_by, steps_per_sec=steps_per_sec,
                   compile_s=compile_s, wall_s=wall,
                   eval_metrics=eval_metrics, export_files=export_files)
