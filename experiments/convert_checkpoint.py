r"""Converts an official VAR / Infinity / Flan-T5 file to an orbax checkpoint.

  python -m experiments.convert_checkpoint --source=var \
    --file=var_d16.pth --variant=var_d16 --out=/ckpts/var_d16/transformer
  python -m experiments.convert_checkpoint --source=var_vae \
    --file=vae_ch160v4096z32.pth --variant=var_d16 \
    --out=/ckpts/var_d16/tokenizer
  python -m experiments.convert_checkpoint --source=infinity \
    --file=infinity_8b_weights/ --variant=infinity_8b --dtype=bfloat16 \
    --out=/ckpts/infinity_8b/transformer
  python -m experiments.convert_checkpoint --source=infinity \
    --file=model.pth --hparams=../shared/reference/infinity_tiny.json \
    --out=/tmp/tiny/transformer

--file: a `.pth` (read with an allow-list unpickler: nothing but tensors
loads), a `.safetensors`, or a folder of shards with its index json (t5: the
Flan-T5 folder). --variant names a row of the variant table, checked against
the file; --hparams instead takes a reference json (its `hyperparameters`).
The file is checked against the architecture's manifest (and against
third_party/<project>/manifests/<file>.json when one exists), converted
block by block, and written to --out atomically (toprovar_jax.convert.run).
"""

import json
import pathlib

from absl import app
from absl import flags

from experiments import launch
from experiments import run_flags
from toprovar_jax.convert import run
from toprovar_jax.convert import sources

_SOURCE = flags.DEFINE_enum("source", None, sorted(run.SOURCES),
                            "Which official file this is.")
_FILE = flags.DEFINE_string("file", None, "The official file or folder.")
_VARIANT = flags.DEFINE_string("variant", "", "Variant table row.")
_HPARAMS = flags.DEFINE_string("hparams", "", "Reference json instead of "
                               "--variant (a model outside the table).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", sorted(run.DTYPES),
                           "Stored dtype of the checkpoint.")

_PROJECTS = {"var": "var", "var_vae": "var", "infinity": "infinity",
             "infinity_vae": "infinity", "t5": "flan_t5"}
_THIRD_PARTY = pathlib.Path(__file__).resolve().parents[1] / "third_party"


def _record(source: str, file: str):
  """The stored manifest of an official file name, if we have one."""
  name = pathlib.Path(file.rstrip("/")).name
  path = _THIRD_PARTY / _PROJECTS[source] / "manifests" / f"{name}.json"
  return json.loads(path.read_text()) if path.exists() else None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  run_flags.refuse_unused("convert_checkpoint", "out")
  with launch.input_phase():
    sd = sources.open_checkpoint(_FILE.value)
    folder = pathlib.Path(_FILE.value)
    hf_config = folder / "config.json" if folder.is_dir() else None
    target = run.target_for(
        _SOURCE.value, variant=_VARIANT.value, hparams=_HPARAMS.value, sd=sd,
        t5_config=str(hf_config) if hf_config and hf_config.exists() else "")
    record = (_record(_SOURCE.value, _FILE.value)
              if _VARIANT.value or _SOURCE.value == "t5" else None)
    if record is not None and target.name not in record["variants"]:
      raise app.UsageError(f"--variant={target.name}: {_FILE.value} is the "
                           f"official file of {', '.join(record['variants'])}")
  run.convert(sd, target, run_flags.OUT.value, dtype=_DTYPE.value,
              record=record,
              source_file=str(pathlib.Path(_FILE.value).absolute()))


if __name__ == "__main__":
  flags.mark_flags_as_required(["source", "file", "out"])
  launch.run(main)
