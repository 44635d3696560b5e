r"""A model given by a golden reference json (`../shared/reference/*.json`).

The transformer and tokenizer come from the json's `hyperparameters` (and
`derived`) objects, so a reference model of any depth or seed runs without a
variant-table row (`pipeline.models_from_config`); the sampling settings
(labels, guidance, top-k/p) are the reference run's. Weights: orbax
checkpoints converted from the reference weights written as official files
(`experiments/convert_checkpoint.py --hparams=<json>`).

Arguments after the colon (typed, `configs/common.py:parse_arg`):
  json=''           the reference json ('' = var_tiny.json of
                    `toprovar_jax.testing.reference_dir()`).
  ckpt_dir=''       folder holding orbax `transformer/` and `tokenizer/`.
  plan=dense        'dense' | plan JSON path.

Launch:
  python -m experiments.generate \
    --config=configs/reference.py:json=../shared/reference/var_tiny.json,ckpt_dir=/tmp/ref \
    --config.sampling.batch_size=2 --workdir=/tmp/ref_var
"""

import json
import pathlib

from configs import common
from toprovar_jax import testing


def get_config(arg=None):
  """Returns the locked config of the reference model named by `json=`."""
  arg = common.parse_arg(arg, json="", ckpt_dir="", plan="dense")
  path = pathlib.Path(arg.json or testing.reference_dir() / "var_tiny.json")
  try:
    meta = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f"config arg 'json': {path}: {e}") from None
  style = ("infinity" if "model_kwargs" in meta["hyperparameters"]
           else "var")
  s = meta.get("sampling", {})
  sampling = dict(common.sampling_defaults(f"{style}_tiny"))
  sampling.update(top_k=int(s.get("top_k", sampling["top_k"])),
                  top_p=float(s.get("top_p", sampling["top_p"])))
  if style == "var":
    sampling["cfg_scale"] = float(s.get("cfg", sampling["cfg_scale"]))
  elif s.get("cfg_list"):
    sampling["cfg_scale"] = float(s["cfg_list"][0])
    sampling["tau"] = float(s.get("tau_list", [sampling["tau"]])[0])
  labels = tuple(int(x) for x in s.get("labels", common.VAR_LABELS))
  config = common.get_base_config(
      variant=f"{style}_tiny", batch_size=max(len(labels), 1), plan=arg.plan,
      ckpt_dir=arg.ckpt_dir, labels=labels,
      text_len=32 if style == "infinity" else 0, **sampling)
  from toprovar_jax import parity  # pylint: disable=import-outside-toplevel
  model, _ = (parity.infinity_configs(meta) if style == "infinity"
              else parity.var_configs(meta))
  with config.unlocked():
    # A label (the json's model name), not a variant-table row.
    config.model.variant = model.name
    # Model configs from this json instead of the variant table.
    config.model.reference = str(path.absolute())
  return config
