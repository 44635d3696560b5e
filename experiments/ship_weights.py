r"""Ships trained emoji weights into the package (SPEC §8, issue 4).

  python -m experiments.ship_weights \
    --tokenizer=/tmp/emoji_tok/export --transformer=/tmp/emoji_tf/export

Copies the npz-shard exports that `experiments/train.py` writes
(`tokenizer_NNN.npz` + `tokenizer.manifest.json`, likewise `transformer`)
into `toprovar_jax/assets/<model>/`, where `ckpt.* = "embedded:<model>"`
reads them. Before anything there changes, it checks that
  * every leaf matches the model's abstract params (shapes, float / int),
    reading every array;
  * each file is at most 16 MiB and everything shipped (shards, manifests,
    README.md) at most 30 MB.
The new folder is built and re-checked beside the old one, then swapped in
by renames; on any failure the old folder is left as it was (README.md, the
provenance notes, is carried over). Then update README.md's numbers.
"""

import os
import pathlib
import secrets
import shutil

from absl import app
from absl import flags
from absl import logging

from toprovar_jax.models import config as config_lib
from toprovar_jax.weights import embedded
from toprovar_jax.weights import loading
from toprovar_jax.weights import shards

_TOKENIZER = flags.DEFINE_string(
    "tokenizer", None, "Folder holding tokenizer.manifest.json + shards.")
_TRANSFORMER = flags.DEFINE_string(
    "transformer", None, "Folder holding transformer.manifest.json + shards.")
_MODEL = flags.DEFINE_string("model", "emoji", "Variant the weights are for.")
_DEST = flags.DEFINE_string(
    "dest", None, "Target folder (default: the package's assets/<model>).")


def _check(directory, model, tokenizer) -> int:
  """Loads both exports against the model; returns the shipped bytes."""
  abstracts = {shards.TRANSFORMER: loading.abstract_transformer(model),
               shards.TOKENIZER: loading.abstract_tokenizer(model,
                                                            tokenizer)}
  paths = []
  for name, abstract in abstracts.items():
    _, manifest = shards.load_params(directory, name, abstract,
                                     context=f"{name} export")
    paths += shards.export_files(directory, name)
    logging.info("%s: step %s, %s params", name, manifest.get("step"),
                 manifest.get("num_params"))
  readme = pathlib.Path(directory) / "README.md"
  return embedded.check_sizes(paths + ([readme] if readme.is_file() else []))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  model = config_lib.get_variant(_MODEL.value)
  tokenizer = config_lib.get_tokenizer(model.name)
  target = (pathlib.Path(_DEST.value) if _DEST.value
            else embedded.embedded_dir(model.name)).absolute()
  sources = {shards.TRANSFORMER: pathlib.Path(_TRANSFORMER.value),
             shards.TOKENIZER: pathlib.Path(_TOKENIZER.value)}
  # Sizes first (cheap), before a byte is copied.
  embedded.check_sizes([p for name, d in sources.items()
                        for p in shards.export_files(d, name)])

  target.parent.mkdir(parents=True, exist_ok=True)
  tag = secrets.token_hex(4)
  staging = target.parent / f".{target.name}.staging-{tag}"
  old = target.parent / f".{target.name}.old-{tag}"
  staging.mkdir()
  try:
    for name, directory in sources.items():
      for path in shards.export_files(directory, name):
        shutil.copy2(path, staging / path.name)
    if (target / "README.md").is_file():
      shutil.copy2(target / "README.md", staging / "README.md")
    total = _check(staging, model, tokenizer)  # the copies, not the sources
    # Swap: the old folder moves aside, the new one takes its name; if the
    # second rename fails the first is undone.
    if target.exists():
      os.rename(target, old)
    try:
      os.rename(staging, target)
    except BaseException:
      if old.exists():
        os.rename(old, target)
      raise
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  shutil.rmtree(old, ignore_errors=True)
  logging.info("Shipped %d bytes (limit %d) to %s; now update its "
               "README.md (steps, commands).", total,
               embedded.MAX_TOTAL_BYTES, target)


if __name__ == "__main__":
  flags.mark_flags_as_required(["tokenizer", "transformer"])
  app.run(main)
