r"""Times attention with and without entropy at a model's probe shapes.

  python -m experiments.benchmark_attention --variant=infinity_2b \
    --scales=10,11,12 --out=$OUT/attn

Writes `--out`/results.json (one row per shape: seconds and the entropy
overhead of each route over plain attention; see
`toprovar_jax/bench/attention.py`) and prints it.
"""

import json
import pathlib

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from toprovar_jax import io
from toprovar_jax.bench import attention as attention_bench
from toprovar_jax.models import config as config_lib

_VARIANT = flags.DEFINE_string("variant", "infinity_2b", "Model variant.")
_SCALES = flags.DEFINE_list("scales", ["10", "11", "12"],
                            "Scale indices whose self-attention is timed.")
_BATCH = flags.DEFINE_integer("batch", 2, "Rows (CFG doubles a batch of 1).")
_IMPL = flags.DEFINE_string("impl", "cudnn", "Plain / entropy route.")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "q, k, v dtype.")
_RUNS = flags.DEFINE_integer("runs", 20, "Timed calls per route (median).")
_BLOCKS = flags.DEFINE_list("pallas_blocks", ["128x128", "64x128", "128x64"],
                            "Pallas FAE block sizes, QxK ('' = skip).")
_OUT = flags.DEFINE_string("out", None, "Output folder.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cfg = config_lib.get_variant(_VARIANT.value)
  scales = [int(s) for s in _SCALES.value]
  bad = [s for s in scales if not 0 <= s < cfg.num_scales]
  if bad:
    raise app.UsageError(f"--scales: {bad} outside 0..{cfg.num_scales - 1} "
                         f"of {cfg.name}")
  blocks = [tuple(int(x) for x in b.split("x")) for b in _BLOCKS.value if b]
  rows = attention_bench.time_attention(
      attention_bench.probe_shapes(cfg, scales, _BATCH.value),
      impl=_IMPL.value, dtype=jnp.dtype(_DTYPE.value), runs=_RUNS.value,
      pallas_blocks=blocks)
  result = dict(variant=cfg.name, scales=scales, device=str(jax.devices()[0]),
                jax=jax.__version__, rows=rows)
  print(json.dumps(result, indent=1))
  if _OUT.value:
    out = pathlib.Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    io.write_json_atomic(out / "results.json", result)


if __name__ == "__main__":
  app.run(main)
