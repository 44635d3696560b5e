"""Parity with the official PyTorch code, from golden reference files.

  reference  reading a reference; the arrays and checks every kind requires
             (`LAYOUTS`); `ReferenceError` for what cannot be used
  compare    shape-first, NaN-safe comparisons and the tolerances
  var        VAR transformer + VQVAE (`var_configs` from NAME.json)
  infinity   Infinity transformer + BSQ VAE (`infinity_configs`)
  text       the tiny T5 and all-MiniLM-L6-v2 encoders

`run(path)` runs every check of one reference: the CLI is
experiments/check_parity.py (exit 0 all pass, 1 a mismatch, 2 a reference
it cannot read or use). Tolerances are README §6 / §12 (fp32 port): logits
1e-4 (Infinity against the fp32-cross-attention `diag/*` arrays), f / f̂ /
h / codes 1e-4, images 2e-4, indices and bits exact.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

from toprovar_jax.parity import compare
from toprovar_jax.parity import infinity
from toprovar_jax.parity import reference
from toprovar_jax.parity import text
from toprovar_jax.parity import var

# The names other modules and tests use.
ReferenceError = reference.ReferenceError  # pylint: disable=redefined-builtin
load = reference.load
kind = reference.kind
var_configs = var.var_configs
infinity_configs = infinity.infinity_configs
LOGITS_TOL, LATENT_TOL, IMAGE_TOL = (compare.LOGITS_TOL, compare.LATENT_TOL,
                                     compare.IMAGE_TOL)

CHECKERS: Dict[str, Callable] = {"var": var.check, "infinity": infinity.check,
                                 "t5": text.check_t5,
                                 "minilm": text.check_minilm}


def run(npz_path) -> Dict[str, Any]:
  """Runs every check the reference's kind requires, and its optional ones.

  Returns:
    {"reference": NAME, "kind": KIND, "pass": bool, "checks": {CHECK: {...,
    "pass": bool}}}, strict-JSON safe (non-finite numbers are None).
  Raises:
    ReferenceError: a file it cannot read, an unsupported kind, a missing
      array, file or json field, weights or inputs that do not fit the
      hyper-parameters; the message (and `file` / `field` / `arrays`) names
      the culprit.
  """
  ref = reference.read(npz_path)
  try:
    checks = CHECKERS[ref.kind](ref)
  except ReferenceError as e:
    if e.field and not e.file:  # a json field, read without its file name
      raise e.in_file(ref.json_name) from e
    raise
  if set(checks) != set(ref.checks()):
    # The layout is the contract; a checker that drifts from it is a bug.
    raise RuntimeError(f"{ref.kind} checks {sorted(checks)} differ from "
                       f"the layout's {sorted(ref.checks())}")
  checks = compare.finite_json(checks)
  return {"reference": ref.name, "kind": ref.kind,
          "pass": all(c["pass"] for c in checks.values()), "checks": checks}
