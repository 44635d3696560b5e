r"""Checks this port against golden outputs of the official PyTorch code.

  python -m experiments.check_parity --reference ../shared/reference/var_tiny.npz

For a model reference (VAR / Infinity) it needs NAME_vae.npz and NAME.json
beside NAME.npz and reads every hyper-parameter from the json; the text
encoder references (MiniLM, tiny T5) carry everything in the npz. It runs every
check the reference's kind requires (toprovar_jax.parity.reference.LAYOUTS)
and prints one strict-JSON object as its last stdout line:
  {"reference": NAME, "kind": KIND, "pass": bool, "checks": {CHECK:
   {"max_abs_err": x, "tol": t, "pass": bool, ...}}}
A check whose shapes differ holds "shape": [ours, theirs] instead of an
error; non-finite values are null, with a "non_finite" count.
Exit status: 0 all checks pass; 1 any mismatch; 2 a reference it cannot read
or use: an unreadable or missing file, an unsupported kind, a missing array
or json field, weights or model inputs that do not fit the hyper-parameters
(then {"reference", "pass": false, "error", and "file" / "field" / "arrays"
where known}).
"""

import json
import sys

from absl import app
from absl import flags
from absl import logging
import jax

_REFERENCE = flags.DEFINE_string(
    "reference", None, "Path to NAME.npz (NAME_vae.npz and NAME.json beside).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Parity is an fp32 comparison: no TF32 / bf16 passes in matmuls.
  jax.config.update("jax_default_matmul_precision", "highest")
  from toprovar_jax import parity  # after the precision flag
  try:
    result = parity.run(_REFERENCE.value)
  except parity.ReferenceError as e:
    logging.error("%s", e)
    print(json.dumps({"reference": _REFERENCE.value, "pass": False,
                      **e.as_json()}, allow_nan=False))
    sys.exit(2)
  for name, c in result["checks"].items():
    logging.info("%-28s %s", name, "ok" if c["pass"] else f"FAIL {c}")
  print(json.dumps(result, allow_nan=False))
  sys.exit(0 if result["pass"] else 1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["reference"])
  app.run(main)
