r"""Builds the emoji training set of the embedded model (SPEC §8).

  bash scripts/setup_emoji.sh   # font + pinned `emoji` package, once
  python -m experiments.build_emoji_dataset --workdir=/tmp/emoji128 \
    --image_size=128

Writes to --workdir, each file atomically: emoji_<S>.npz (`load_dataset`),
captions.txt (one caption per line, dataset order: the input of
`experiments/encode_captions.py`), preview.png (100 emoji on white),
preview_augmented.png (the same emoji
through `augment`, seed 0) and summary.json (counts, held-out captions,
rejected emoji with reasons, file sizes, build time). A workdir that already
holds files is refused unless --overwrite.
"""

import collections
import hashlib
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

from toprovar_jax import io
from toprovar_jax.data import augment
from toprovar_jax.data import emoji as emoji_data

_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "Image side, pixels.")
_INCLUDE_FLAGS = flags.DEFINE_bool("include_flags", True, "Keep flags.")
_HELDOUT = flags.DEFINE_float("heldout_frac", 0.06, "Held-out fraction.")
_SEED = flags.DEFINE_integer("seed", 0, "Split seed.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Allow a workdir that already holds files.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Fail on a missing font or package before the workdir is touched.
  emoji_data.find_font()
  emoji_data.list_emoji()
  workdir = io.prepare_workdir(_WORKDIR.value, _OVERWRITE.value)

  t0 = time.perf_counter()
  dataset = emoji_data.make_dataset(
      image_size=_IMAGE_SIZE.value, include_flags=_INCLUDE_FLAGS.value,
      heldout_frac=_HELDOUT.value, seed=_SEED.value)
  build_s = time.perf_counter() - t0
  npz = emoji_data.save_dataset(
      workdir / f"emoji_{_IMAGE_SIZE.value}.npz", dataset)
  io.write_text_atomic(workdir / "captions.txt",
                       "".join(c + "\n" for c in dataset.captions))
  # Evenly spaced over the code-point order, so every category shows.
  shown = np.linspace(0, len(dataset.captions) - 1, 100).astype(int)
  io.save_image_grid(workdir / "preview.png",
                     augment.composite(dataset.images[shown]), 10)
  io.save_image_grid(workdir / "preview_augmented.png", augment.augment(
      np.random.default_rng(0), dataset.images[shown],
      image_size=_IMAGE_SIZE.value), 10)

  meta = dataset.metadata
  summary = dict(
      num_emoji=len(dataset.captions), num_heldout=int(dataset.heldout.sum()),
      num_train=int((~dataset.heldout).sum()),
      num_candidates=meta["num_candidates"], num_rejected=meta["num_rejected"],
      rejected_by_reason=collections.Counter(
          r["reason"] for r in meta["rejected"]),
      npz=npz.name, npz_bytes=npz.stat().st_size,
      npz_sha256=hashlib.sha256(npz.read_bytes()).hexdigest(),
      build_s=round(build_s, 2), preview_captions=dataset.captions[
          shown].tolist(),
      heldout_captions=dataset.captions[dataset.heldout].tolist(),
      **{k: v for k, v in meta.items() if not k.startswith("num_")})
  io.write_json_atomic(workdir / "summary.json", summary)
  logging.info("%d emoji (%d held out, %d rejected), %.1f MB, built in %.1fs"
               " -> %s", summary["num_emoji"], summary["num_heldout"],
               summary["num_rejected"], summary["npz_bytes"] / 1e6, build_s,
               workdir)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
