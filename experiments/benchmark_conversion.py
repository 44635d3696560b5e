r"""Wall time and peak RAM of converting an official-size checkpoint (issue 14).

  python -m experiments.benchmark_conversion --variant=infinity_2b \
    --scratch=/tmp/conv --result=/tmp/conv_result.json

Writes a synthetic `.pth` with the real tensor names and shapes of the
variant (random values; Infinity-2B: ~8.8 GB fp32, `block_chunks` layout as
the official file), then runs the user's command
`python -m experiments.convert_checkpoint` on it in a child process and
records its wall time and peak anonymous memory (RssAnon, sampled; and
ru_maxrss, which also counts resident pages of the memory-mapped files), next
to the checkpoint's size and its largest tensor. Needs ~2x the checkpoint's
size free under --scratch; the files are removed afterwards unless --keep.
"""

import json
import os
import pathlib
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from toprovar_jax import io
from toprovar_jax.convert import run
from toprovar_jax.convert import synthetic

_VARIANT = flags.DEFINE_string("variant", "infinity_2b", "Transformer row.")
_CHUNKS = flags.DEFINE_integer("chunks", 4, "block_chunks of the file (0 = "
                               "blocks.{l}.); Infinity-2B ships 4.")
_SCRATCH = flags.DEFINE_string("scratch", None, "Folder for the files.")
_RESULT = flags.DEFINE_string("result", None, "JSON file to write.")
_KEEP = flags.DEFINE_bool("keep", False, "Keep the .pth and orbax output.")


def _anon_bytes(pid: int) -> int:
  """RssAnon of a live process (0 once it is gone)."""
  try:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("RssAnon:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  scratch = pathlib.Path(_SCRATCH.value)
  scratch.mkdir(parents=True, exist_ok=True)
  target = run.target_for("infinity" if _VARIANT.value.startswith("infinity")
                          else "var", variant=_VARIANT.value)
  keys = synthetic.official_keys(target, chunks=_CHUNKS.value)
  largest = max(keys.items(), key=lambda kv: int(np.prod(kv[1])))
  src, out = scratch / f"{_VARIANT.value}_synthetic.pth", scratch / "orbax"
  t0 = time.perf_counter()
  size = synthetic.write_pth(src, keys)
  write_s = time.perf_counter() - t0
  shutil.rmtree(out, ignore_errors=True)
  cmd = [sys.executable, "-m", "experiments.convert_checkpoint",
         "--source=" + ("infinity" if _VARIANT.value.startswith("infinity")
                        else "var"),
         f"--file={src}", f"--variant={_VARIANT.value}", f"--out={out}"]
  t0 = time.perf_counter()
  with tempfile.TemporaryFile("w+") as err:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err,
                            text=True,
                            cwd=pathlib.Path(__file__).resolve().parents[1])
    peak_anon = 0
    while proc.poll() is None:
      peak_anon = max(peak_anon, _anon_bytes(proc.pid))
      time.sleep(0.1)
    wall = time.perf_counter() - t0
    err.seek(0)
    if proc.returncode:
      raise SystemExit(f"conversion failed ({proc.returncode}): "
                       f"{err.read()[-2000:]}")
  peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  out_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
  record = dict(
      variant=_VARIANT.value, command=" ".join(cmd[1:]),
      checkpoint_bytes=size, tensors=len(keys),
      parameters=int(sum(np.prod(s) for s in keys.values())),
      largest_tensor=dict(name=largest[0], shape=list(largest[1]),
                          bytes=int(np.prod(largest[1])) * 4),
      synthetic_write_s=round(write_s, 1), convert_wall_s=round(wall, 1),
      # Anonymous memory (heap, arrays) sampled every 0.1 s: what the
      # machine must have. ru_maxrss also counts the pages of the
      # memory-mapped source and scratch files the kernel keeps resident
      # while it has room; they are page cache, reclaimable under pressure.
      convert_peak_anon_bytes=peak_anon,
      peak_anon_over_checkpoint=round(peak_anon / size, 3),
      peak_anon_over_largest_tensor=round(
          peak_anon / (int(np.prod(largest[1])) * 4), 1),
      convert_peak_rss_bytes=peak_kib * 1024,
      orbax_bytes=out_bytes,
      machine=dict(cpus=os.cpu_count(), python=platform.python_version(),
                   mem_total_bytes=os.sysconf("SC_PAGE_SIZE")
                   * os.sysconf("SC_PHYS_PAGES")))
  io.write_json_atomic(_RESULT.value, record)
  print(json.dumps(record))
  if not _KEEP.value:
    src.unlink()
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["scratch", "result"])
  app.run(main)
