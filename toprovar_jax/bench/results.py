"""What a benchmark run records: metadata, speedups and a markdown table.

Pure: rows (from `latency.bench_plan` / `compile_time.compile_plan`) in,
JSON-ready dicts and markdown text out; `experiments/benchmark.py` writes
them (`toprovar_jax.io`).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import pathlib
import subprocess
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax

import toprovar_jax
from toprovar_jax.bench import latency

_PACKAGE = pathlib.Path(toprovar_jax.__file__).resolve().parent


def source_digest(extra_dirs: Sequence[pathlib.Path] = ()) -> str:
  """First 12 hex digits of a SHA-256 over the package's Python sources and
  those directly in `extra_dirs` (path and bytes, sorted by path).

  Identifies the code a benchmark ran even where `git rev-parse` cannot (the
  GPU machine's copy of the tree carries a stale .git). The benchmark passes
  its own folder (experiments/); to compare on a checkout:
    python -c "import pathlib; from toprovar_jax.bench import results; \
print(results.source_digest([pathlib.Path('experiments')]))"
  """
  files = [(f"toprovar_jax/{p.relative_to(_PACKAGE)}", p)
           for p in _PACKAGE.glob("**/*.py")]
  for folder in extra_dirs:
    folder = pathlib.Path(folder).resolve()
    files += [(f"{folder.name}/{p.name}", p) for p in folder.glob("*.py")]
  h = hashlib.sha256()
  for name, path in sorted(files):
    h.update(name.encode())
    h.update(path.read_bytes())
  return h.hexdigest()[:12]


def commit() -> str:
  """`git rev-parse --short HEAD` of the current folder, or 'unknown'."""
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True,
                          check=False).stdout.strip() or "unknown"
  except OSError:
    return "unknown"


def metadata(setup: latency.BenchSetup, digest: str) -> Dict[str, Any]:
  """What every results.json records about the run."""
  return {"setup": dataclasses.asdict(setup), "device": str(jax.devices()[0]),
          "jax": jax.__version__,
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
          "commit": commit(), "source_digest": digest}


def add_speedups(rows: List[Dict[str, Any]]) -> None:
  """Sets each row's `measured_speedup` against a dense row: the dense row
  with the same execution settings when there is one, else the first dense
  row (`speedup_reference` names it); no dense row, no speedup."""
  dense = [r for r in rows if r["plan"] == "dense"]
  for r in rows:
    same = [d for d in dense if d["execution"] == r["execution"]]
    ref = (same or dense or [None])[0]
    if ref is not None:
      r["measured_speedup"] = ref["transformer_s"] / r["transformer_s"]
      r["speedup_reference"] = latency.result_key(ref)


def record(meta: Dict[str, Any], rows: List[Dict[str, Any]],
           errors: Dict[str, str], *, compile_only: bool
           ) -> Tuple[Dict[str, Any], str]:
  """(results.json dict, benchmarks.md text) of a run's rows so far; a
  timed run's rows get their speedups (`add_speedups`)."""
  if compile_only:
    result = dict(meta, compile_only=rows, errors=errors)
    return result, compile_markdown(result)
  add_speedups(rows)
  result = dict(meta, peak_memory_gib=latency.peak_memory_gib(), plans=rows,
                errors=errors)
  return result, markdown(result)


def _gib(x: Optional[float]) -> str:
  return "not reported" if x is None else f"{x:.1f} GiB"


def markdown(res: Dict[str, Any]) -> str:
  """A BENCHMARKS.md section of a timed run's results.json."""
  s = res["setup"]
  lines = [
      f"### {s['variant']} — batch {s['batch']} (CFG ×2), {s['dtype']}, "
      f"text_len {s['text_len']}",
      "", f"Device {res['device']}, jax {res['jax']}, {res['date'][:10]}, "
      f"commit {res['commit']} (source digest {res['source_digest']}); "
      "peak device memory "
      f"{_gib(res['peak_memory_gib'])} (whole process).", "",
      "| plan and execution | transformer s | with decode s | decode s | "
      "compile s | TFLOP | FLOP speedup | measured speedup |",
      "|---|---|---|---|---|---|---|---|"]
  for r in res["plans"]:
    speedup = r.get("measured_speedup")
    lines.append(
        f"| {latency.result_key(r)} | {r['transformer_s']:.4f} | "
        f"{r['with_decode_s']:.4f} | {r['decode_only_s']:.4f} | "
        f"{r['compile_s']:.1f} | {r['tflop']:.2f} | {r['flop_speedup']:.2f}× "
        f"| {'—' if speedup is None else f'{speedup:.2f}×'} |")
  return "\n".join(lines) + "\n"


def compile_markdown(res: Dict[str, Any]) -> str:
  """A BENCHMARKS.md section of a --compile_only run's results.json."""
  rows = res["compile_only"]
  lines = [f"Compile only, {res['setup']['variant']}, backend "
           f"{rows[0]['backend'] if rows else '?'}, jax {res['jax']}, commit "
           f"{res['commit']} (source digest {res['source_digest']}):", "",
           "| plan and execution | lower s | compile s |", "|---|---|---|"]
  lines += [f"| {latency.result_key(r)} | {r['lower_s']:.1f} | "
            f"{r['compile_s']:.1f} |" for r in rows]
  return "\n".join(lines) + "\n"
