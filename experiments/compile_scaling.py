r"""How XLA's compile time grows with unrolled transformer blocks.

  python -m experiments.compile_scaling --variant=infinity_2b \
      --layers=32,64,128,224 --split=32 --out=/tmp/cscale

For each N in --layers, lowers and compiles N unrolled blocks as one program,
and (with --split=K) as N/K programs of K blocks each: the compile cost of
unrolling small scales inside the one generation program against per-scale
programs. Abstract weights: nothing runs, any backend. Writes results.json
and benchmarks.md into --out.
"""

import datetime
import json
import os
import pathlib

from absl import app
from absl import flags
from absl import logging
import jax

from toprovar_jax import io
from toprovar_jax.bench import compile_time
from toprovar_jax.bench import results
from toprovar_jax.models import config as config_lib

_VARIANT = flags.DEFINE_string("variant", "infinity_2b", "Model variant.")
_LAYERS = flags.DEFINE_list("layers", ["32", "64", "128"],
                            "Unrolled block counts.")
_SPLIT = flags.DEFINE_integer("split", 0,
                              "Also compile as programs of this many blocks "
                              "(0 = only one program).")
_TOKENS = flags.DEFINE_integer("tokens", 64, "Tokens per row.")
_ATTN = flags.DEFINE_string("attn_impl", "xla", "Attention implementation.")
_OUT = flags.DEFINE_string("out", None, "Output folder.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg = config_lib.get_variant(_VARIANT.value)
  layers = [int(n) for n in _LAYERS.value]
  if _SPLIT.value and any(n % _SPLIT.value for n in layers):
    raise app.UsageError(f"--layers {layers}: each must be a multiple of "
                         f"--split={_SPLIT.value}")
  rows = []
  for n in layers:
    for programs in sorted({1, n // _SPLIT.value} if _SPLIT.value else {1}):
      r = compile_time.compile_block_chain(cfg, n, programs=programs,
                                           tokens=_TOKENS.value,
                                           attn_impl=_ATTN.value)
      logging.info("%s", r)
      print(json.dumps(r), flush=True)
      rows.append(r)
  os.makedirs(_OUT.value, exist_ok=True)
  result = {"variant": cfg.name, "backend": jax.default_backend(),
            "jax": jax.__version__, "attn_impl": _ATTN.value,
            "tokens": _TOKENS.value,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "source_digest": results.source_digest(
                [pathlib.Path(__file__).parent]), "rows": rows}
  io.write_json_atomic(os.path.join(_OUT.value, "results.json"), result)
  lines = ["| blocks | programs | lower s | compile s |", "|---|---|---|---|"]
  lines += [f"| {r['layers']} | {r['programs']} | {r['lower_s']:.1f} | "
            f"{r['compile_s']:.1f} |" for r in rows]
  io.write_text_atomic(os.path.join(_OUT.value, "benchmarks.md"),
                       "\n".join(lines) + "\n")


if __name__ == "__main__":
  flags.mark_flags_as_required(["out"])
  app.run(main)
