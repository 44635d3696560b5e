r"""GPU self-check: Pallas FAE and cuDNN against XLA (run before benchmarks).

  python -m experiments.gpu_selfcheck --out=$OUT

Writes $OUT/selfcheck.json (every check: max |diff|, tolerance, the
measured bf16 noise it is based on; `passed`) and exits 1 when a check
fails. Without a GPU it refuses (exit 2) unless --norequire_gpu, which runs
the XLA and Pallas-interpret parts only (the report says `complete: false`).
Imports jax and the library only (no ml_collections). See
`toprovar_jax.gpu_selfcheck` for what is compared and why the tolerances.
"""

import json
import pathlib
import sys

from absl import app
from absl import flags
import jax

from toprovar_jax import gpu_selfcheck

_OUT = flags.DEFINE_string("out", None, "Folder for selfcheck.json.")
_REQUIRE_GPU = flags.DEFINE_bool(
    "require_gpu", True, "Refuse to run without a GPU (else: XLA and "
    "Pallas-interpret parts only).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  gpu = jax.default_backend() == "gpu"
  if not gpu and _REQUIRE_GPU.value:
    raise app.UsageError(
        f"no GPU (JAX backend {jax.default_backend()!r}): the self-check "
        "needs one for cuDNN and compiled Pallas; pass --norequire_gpu to "
        "run the XLA / Pallas-interpret parts only", exitcode=2)
  report = gpu_selfcheck.run(gpu=gpu)
  tmp = out / "selfcheck.json.tmp"
  tmp.write_text(json.dumps(report, indent=1) + "\n")
  tmp.replace(out / "selfcheck.json")
  for c in report["checks"]:
    print(f"{'ok  ' if c['passed'] else 'FAIL'} {c['name']}: "
          f"{c['max_abs_diff']:.3g} <= {c['tolerance']:.3g}")
  print(f"selfcheck {'passed' if report['passed'] else 'FAILED'} in "
        f"{report['seconds']} s ({report['backend']}"
        f"{'' if gpu else ', incomplete: ' + report['note']})")
  if not report["passed"]:
    sys.exit(1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["out"])
  app.run(main)
