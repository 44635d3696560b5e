r"""Quality evidence for the embedded emoji model (SPEC §8; issue 4, item 5).

  python -m experiments.evaluate_emoji --workdir=/tmp/emoji_eval \
    --dataset=/tmp/emoji128/emoji_128.npz --captions=/tmp/emoji_text.npz \
    --out_docs=docs/emoji_eval

--tokenizer / --transformer default to the shipped weights
(toprovar_jax/assets/emoji/); any `weights.shards` export folder works. What is
measured and why: `toprovar_jax/evaluation/emoji.py`. Writes to --workdir,
atomically: results.json (metrics, settings, wall times; per caption the
LPIPS ranks of its samples, in grid row order) and PNG grids, captions drawn
left of each row (compact ones, and *_all with every caption); results.json
and the compact grids also go to --out_docs when given.
"""

import pathlib

from absl import app
from absl import flags
from absl import logging
import jax

import toprovar_jax
from configs import common
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
_OUT_DOCS = flags.DEFINE_string("out_docs", None, "Also put grids here.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Allow a non-empty "
                               "workdir.")
# Evaluation settings; sampling defaults are the emoji config's.
_D = emoji_eval.EvalConfig(**common.sampling_defaults("emoji"))
_SETTINGS = {
    name: define(name, getattr(_D, name), text) for define, name, text in (
        (flags.DEFINE_integer, "num_train_captions", "Training captions."),
        (flags.DEFINE_integer, "num_heldout_captions", "Held-out captions "
         "(0 = all)."),
        (flags.DEFINE_integer, "samples_per_caption", "Samples each."),
        (flags.DEFINE_integer, "seed", "Generation seed."),
        (flags.DEFINE_integer, "batch_size", "Images per generation call."),
        (flags.DEFINE_float, "cfg_scale", "Guidance scale."),
        (flags.DEFINE_float, "tau", "Logit temperature."),
        (flags.DEFINE_integer, "top_k", "Top-k."),
        (flags.DEFINE_float, "top_p", "Top-p."),
        (flags.DEFINE_integer, "grid_rows", "Captions in compact grids."))}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.info("JAX %s, process %d/%d, devices: %s", jax.__version__,
               jax.process_index(), jax.process_count(), jax.devices())
  config = emoji_eval.EvalConfig(
      **{name: flag.value for name, flag in _SETTINGS.items()})
  logging.info("%s", config)
  workdir = io.prepare_workdir(_WORKDIR.value, _OVERWRITE.value)
  models = emoji_eval.load_models(tokenizer_dir=_TOKENIZER.value,
                                  transformer_dir=_TRANSFORMER.value,
                                  variant=_VARIANT.value)
  dataset = emoji.load_dataset(_DATASET.value)
  report = emoji_eval.evaluate(models, dataset, _CAPTIONS.value,
                               config=config)

  # Docs get the compact grids and results.json; the workdir everything.
  folders = [workdir]
  if _OUT_DOCS.value:
    folders.append(pathlib.Path(_OUT_DOCS.value))
    folders[-1].mkdir(parents=True, exist_ok=True)
  results = dict(report.results, dataset=_DATASET.value,
                 captions=_CAPTIONS.value,
                 files=sorted(f"{s}.png" for s in report.figures))
  for folder in folders:
    for stem, image in report.figures.items():
      if folder == workdir or not stem.endswith("_all"):
        io.write_png_atomic(folder / f"{stem}.png", image)
    io.write_json_atomic(folder / "results.json", results)
  logging.info("train top1 %.3f top5 %.3f; heldout top1 %.3f top5 %.3f; "
               "%.0f s; wrote %s", results["train"]["top1"],
               results["train"]["top5"], results["heldout"]["top1"],
               results["heldout"]["top5"], results["timings"]["total_s"],
               workdir)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "dataset", "captions"])
  app.run(main)
