"""Where a benchmark's time goes: device trace and HLO attribution.

`profile_summary` traces one call of a program and aggregates the device
kernels by name, finds the idle gaps between them (the device waiting for
the host), and, given the compiled program's HLO text, attributes every
kernel to the sampler's per-scale named scope (`scaleNN`), split by kernel
class (weight / cache slices, cache writes, attention, GEMM, copies,
elementwise). Reads the trace with `jax.profiler.ProfileData`; nothing here
needs TensorBoard.
"""

from __future__ import annotations

import collections
import glob
import re
import time
from typing import Any, Dict, List, Optional

import jax


def profile_summary(fn, logdir: str, top: int = 40,
                    hlo_text: Optional[str] = None) -> Dict[str, Any]:
  """Traces one call of `fn` and aggregates device kernel time by name.

  Returns {"device_busy_ms", "wall_ms", "kernels": [(name, ms, count), ...],
  "gaps", "scales"} so a benchmark can show where time goes without
  TensorBoard. With the compiled program's HLO text, "scales" attributes
  kernels to the sampler's per-scale named scopes (see `scale_timeline`).
  """
  jax.block_until_ready(fn())
  t = time.perf_counter()
  with jax.profiler.trace(logdir):
    jax.block_until_ready(fn())
  wall = time.perf_counter() - t
  files = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
  data = jax.profiler.ProfileData.from_file(sorted(files)[-1])
  agg: Dict[str, List[float]] = {}
  busy = 0.0
  layout = [(p.name, [ln.name for ln in p.lines][:12]) for p in data.planes]
  events = _device_events(data)
  for ev in events:
    ms = (ev[1] - ev[0]) / 1e6
    busy += ms
    a = agg.setdefault(ev[2], [0.0, 0])
    a[0] += ms
    a[1] += 1
  kernels = sorted(((k, v[0], v[1]) for k, v in agg.items()),
                   key=lambda x: -x[1])[:top]
  out = {"device_busy_ms": busy, "wall_ms": wall * 1e3, "kernels": kernels,
         "layout": layout, "gaps": _idle_gaps(events)}
  if hlo_text is not None:
    out["scales"] = scale_timeline(events, hlo_scopes(hlo_text))
  out["event_stats_sample"] = _stats_sample(data)
  return out


def _stats_sample(data, per_line: int = 3) -> List[Any]:
  """A few events' stats per device line (what the trace offers to attribute
  kernels with; differs between CPU and GPU and between jax versions)."""
  out = []
  for plane in data.planes:
    if not plane.name.startswith("/device:GPU"):
      continue
    for line in plane.lines:
      for ev in list(line.events)[:per_line]:
        out.append((line.name, ev.name[:60],
                    [(k, str(v)[:80]) for k, v in ev.stats][:12]))
  return out[:40]


def _device_events(data):
  """(start_ns, end_ns, kernel name, hlo_op or None) of every kernel on a
  device stream; on a CPU-only trace, of every thunk that names an hlo_op."""
  gpu = [p for p in data.planes if p.name.startswith("/device:GPU")]
  out = []
  for plane in gpu or data.planes:
    for line in plane.lines:
      # GPU: one line per stream; skip the aggregated "XLA Ops"/"Modules".
      if gpu and "Stream" not in line.name:
        continue
      for ev in line.events:
        # hlo_op names the instruction; the kernel name does not (XLA reuses
        # one kernel for identical fusions of different scales).
        op = next((str(v) for k, v in ev.stats if k == "hlo_op"), None)
        if not gpu and op is None:
          continue
        out.append((ev.start_ns, ev.start_ns + ev.duration_ns, ev.name, op))
  return out


_HLO_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=")
_HLO_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_OP_NAME = re.compile(r"op_name=\"([^\"]*)\"")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_SCALE = re.compile(r"\bscale(\d+)\b")


def hlo_scopes(hlo_text: str) -> Dict[str, int]:
  """Instruction name -> scale index, from the `scaleNN` named scope in the
  instruction's metadata op_name (the sampler opens one per scale).

  Fusions that XLA created without metadata take the scale of the first
  instruction with one inside the computation they call.
  """
  own, calls, comp_scale = {}, {}, {}
  comp = None
  for line in hlo_text.splitlines():
    if line and not line[0].isspace():
      m = _HLO_COMP.match(line)
      comp = m.group(1) if m else None
      continue
    m = _HLO_INSTR.match(line)
    if not m:
      continue
    op = _OP_NAME.search(line)
    sc = _SCALE.search(op.group(1)) if op else None
    if sc:
      own[m.group(1)] = int(sc.group(1))
      if comp is not None:
        comp_scale.setdefault(comp, int(sc.group(1)))
    else:
      c = _CALLS.search(line)
      if c:
        calls[m.group(1)] = c.group(1)
  for name, c in calls.items():
    if c in comp_scale:
      own[name] = comp_scale[c]
  # GPU kernels of XLA fusions are named after the fusion with "." -> "_".
  own.update({k.replace(".", "_"): v for k, v in list(own.items())})
  return own


_KERNEL_CLASSES = (
    # (class, name fragments), first match wins; names as the GPU trace
    # shows them (XLA fusions, cuBLAS nvjet/xmma/gemm, cuDNN SDPA, Pallas).
    ("weight_or_cache_slice", ("dynamic_slice_fusion",)),
    ("cache_write", ("dynamic_update_slice",)),
    ("attention", ("sdpa", "fmha", "flash", "fae")),
    ("gemm", ("nvjet", "gemm", "xmma", "cublas", "cutlass")),
    ("concat_copy", ("concatenate", "memcpy", "copy", "memset")),
)


def kernel_class(name: str) -> str:
  """Coarse kind of a kernel from its name: weight_or_cache_slice (a layer's
  slice of the stacked weights / caches), cache_write, attention, gemm,
  concat_copy, or elementwise (every other fusion)."""
  low = name.lower()
  for cls, parts in _KERNEL_CLASSES:
    if any(p in low for p in parts):
      return cls
  return "elementwise"


def scale_timeline(events, scopes: Dict[str, int]) -> Dict[str, Any]:
  """Per-scale device time from kernel events attributed by hlo_op.

  Walks the kernels in start order with a frontier (the latest end so far):
  each kernel's advance of the frontier, idle gap before it included, counts
  towards its scale's wall time, so the scales' wall_ms (plus the
  unattributed kernels' share) partition the traced span even where XLA
  schedules a scale's independent work early. busy_ms sums kernel durations.

  A kernel is attributed by its hlo_op stat, else by its own name (XLA
  fusion kernels), else (library kernels: cuBLAS, cuDNN; graph nodes) to the
  scale of the kernel before it, counted in "inherited_ms".

  Returns {"per_scale": [{"scale", "wall_ms", "busy_ms", "kernels",
  "busy_by_class"}, ...], "unattributed_wall_ms", "unattributed_busy_ms",
  "unattributed_top", "inherited_ms"}; busy_by_class splits a scale's kernel
  time by `kernel_class`.
  """
  per: Dict[Any, List[float]] = {}
  classes: Dict[Any, collections.Counter] = {}
  unattr = collections.Counter()
  frontier = None
  prev = None
  inherited = 0.0
  for start, end, name, op in sorted(events):
    si = scopes.get(op) if op is not None else None
    if si is None:
      si = scopes.get(name)
    if si is None and prev is not None:
      si = prev
      inherited += (end - start) / 1e6
    prev = si
    if si is None:
      unattr[name] += (end - start) / 1e6
    r = per.setdefault(si, [0.0, 0.0, 0])
    if frontier is None:
      frontier = start
    if end > frontier:
      r[0] += (end - frontier) / 1e6
      frontier = end
    r[1] += (end - start) / 1e6
    r[2] += 1
    classes.setdefault(si, collections.Counter())[kernel_class(name)] += (
        (end - start) / 1e6)
  none = per.pop(None, [0.0, 0.0, 0])
  rows = [{"scale": si, "wall_ms": r[0], "busy_ms": r[1], "kernels": r[2],
           "busy_by_class": dict(classes[si])}
          for si, r in sorted(per.items())]
  return {"per_scale": rows, "unattributed_wall_ms": none[0],
          "unattributed_busy_ms": none[1],
          "unattributed_top": unattr.most_common(8), "inherited_ms": inherited}


def _idle_gaps(events, top: int = 15) -> Dict[str, Any]:
  """Idle time between consecutive GPU kernels (all streams merged).

  The biggest gaps, with the kernels around them, show where the device waits
  for the host (while-loop predicates, launches) rather than computing.
  events: (start_ns, end_ns, name, hlo_op) from `_device_events`.
  """
  evs = sorted((start, end, name) for start, end, name, _ in events)
  gaps, end, prev = [], None, None
  for start, stop, name in evs:
    if end is not None and start > end:
      gaps.append(((start - end) / 1e6, prev, name))
    if end is None or stop > end:
      end, prev = stop, name
  gaps.sort(key=lambda g: -g[0])
  span = (evs[-1][1] - evs[0][0]) / 1e6 if evs else 0.0
  return {"span_ms": span, "idle_ms": sum(g[0] for g in gaps),
          "num_gaps_over_20us": sum(g[0] > 0.02 for g in gaps),
          "largest": gaps[:top]}
