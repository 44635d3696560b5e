r"""Sampling settings of the emoji model: retrieval against diversity.

  python -m experiments.sweep_emoji_sampling --workdir=/tmp/emoji_sweep \
    --dataset=.carry/emoji128/emoji_128.npz --captions=.carry/emoji_text.npz \
    --cfg_scales=3 --taus=0.5,1.0 --top_ps=0.97,1.0

Every (cfg, τ, top-p) of the grid samples the same fixed training captions
(`emoji_eval.choose_train_captions`) with the same seeds, and is scored by
LPIPS retrieval (top-1 / top-5 of the caption's own emoji among all
rendered emoji) and by the diversity of each caption's samples (mean
pairwise LPIPS; `emoji_eval.sampling_sweep`). --tokenizer / --transformer
default to the shipped weights. Writes results.json (atomically) to
--workdir; one compile per top-p value (cfg and τ are traced).
"""

import itertools
import pathlib

from absl import app
from absl import flags
from absl import logging

import toprovar_jax
from toprovar_jax import io
from toprovar_jax.data import emoji
from toprovar_jax.evaluation import emoji as emoji_eval

_ASSETS = str(pathlib.Path(toprovar_jax.__file__).parent / "assets" / "emoji")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder.")
_TOKENIZER = flags.DEFINE_string("tokenizer", _ASSETS, "Tokenizer export.")
_TRANSFORMER = flags.DEFINE_string("transformer", _ASSETS,
                                   "Transformer export.")
_VARIANT = flags.DEFINE_string("variant", "emoji", "Model variant.")
_DATASET = flags.DEFINE_string("dataset", None, "build_emoji_dataset npz.")
_CAPTIONS = flags.DEFINE_string("captions", None, "encode_captions npz.")
_CFGS = flags.DEFINE_list("cfg_scales", ["3"], "Guidance scales.")
_TAUS = flags.DEFINE_list("taus", ["0.5", "1.0"], "Logit temperatures.")
_TOP_PS = flags.DEFINE_list("top_ps", ["0.97", "1.0"], "Top-p values.")
_NUM = flags.DEFINE_integer("num_captions", 16, "Training captions.")
_SAMPLES = flags.DEFINE_integer("samples_per_caption", 4, "Samples each.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per generate call.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Allow a non-empty "
                               "workdir.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  settings = list(itertools.product(*(
      [float(v) for v in values] for values in (_CFGS.value, _TAUS.value,
                                                _TOP_PS.value))))
  config = emoji_eval.EvalConfig(num_train_captions=_NUM.value,
                                 samples_per_caption=_SAMPLES.value,
                                 batch_size=_BATCH.value)
  workdir = io.prepare_workdir(_WORKDIR.value, _OVERWRITE.value)
  models = emoji_eval.load_models(tokenizer_dir=_TOKENIZER.value,
                                  transformer_dir=_TRANSFORMER.value,
                                  variant=_VARIANT.value)
  rows = emoji_eval.sampling_sweep(
      models, emoji.load_dataset(_DATASET.value), _CAPTIONS.value, settings,
      config=config)
  io.write_json_atomic(workdir / "results.json", dict(
      model=models.model.name, sources=models.sources,
      num_captions=_NUM.value, samples_per_caption=_SAMPLES.value,
      seed=config.seed, top_k=config.top_k, rows=rows))
  for row in rows:
    logging.info("cfg %.2f tau %.2f top-p %.3f: top1 %.3f top5 %.3f, "
                 "diversity %s", row["cfg_scale"], row["tau"], row["top_p"],
                 row["top1"], row["top5"], row["diversity"])


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "dataset", "captions"])
  app.run(main)
