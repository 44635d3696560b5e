r"""Writes third_party/<project>/manifests/<official file>.json.

  python -m experiments.make_manifests [--only=var_d16.pth,...]

Each record lists the tensor names, torch shapes and parameter total an
official file must hold, derived from our architecture by running our own
converters on `convert.common.RecordKeys` (`convert.manifest`): no upstream
code is read or copied. `experiments/convert_checkpoint.py` checks a file
named like one of these against its record before converting, and the
record against the architecture (tests/convert/manifest_test.py keeps them
in sync).
"""

import json
import pathlib

from absl import app
from absl import flags

from toprovar_jax.convert import manifest
from toprovar_jax.models import config as config_lib
from toprovar_jax.text import t5

_ONLY = flags.DEFINE_list("only", [], "Write only these file names.")
ROOT = pathlib.Path(__file__).resolve().parents[1] / "third_party"


def official_files():
  """(project, file, Target, variants) of every official file we convert."""
  v, tok = config_lib.get_variant, config_lib.get_tokenizer
  var_sizes = ("var_d16", "var_d20", "var_d24", "var_d30", "var_d36")
  out = [("var", f"{n}.pth", manifest.Target("transformer", v(n), n), (n,))
         for n in var_sizes]
  out.append(("var", "vae_ch160v4096z32.pth",
              manifest.Target("vqvae", tok("var_d16"), "var_d16"), var_sizes))
  out += [
      ("infinity", "infinity_2b_reg.pth",
       manifest.Target("transformer", v("infinity_2b"), "infinity_2b"), ()),
      ("infinity", "infinity_8b_weights",
       manifest.Target("transformer", v("infinity_8b"), "infinity_8b"), ()),
      ("infinity", "infinity_vae_d32reg.pth",
       manifest.Target("bsq", tok("infinity_2b"), "infinity_2b"), ()),
      ("infinity", "infinity_vae_d56_f8_14_patchify.pth",
       manifest.Target("bsq", tok("infinity_8b"), "infinity_8b"), ()),
      ("flan_t5", "flan-t5-xl",
       manifest.Target("t5", t5.T5Config.flan_t5_xl(), "T5 encoder"), ()),
  ]
  return out


def main(argv):
  del argv
  for project, file, target, variants in official_files():
    if _ONLY.value and file not in _ONLY.value:
      continue
    path = ROOT / project / "manifests" / f"{file}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = manifest.as_json(target, file, variants)
    path.write_text(json.dumps(record, indent=0) + "\n")
    print(f"{path}: {len(record['tensors'])} tensors, "
          f"{record['parameters']:,} parameters")


if __name__ == "__main__":
  app.run(main)
