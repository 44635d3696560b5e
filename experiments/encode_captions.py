r"""Precomputes all-MiniLM-L6-v2 token features for a captions file (SPEC §8).

  python -m experiments.encode_captions \
    --captions=/tmp/emoji_captions.txt --output=/tmp/emoji_text.npz \
    --max_len=32

Reads one caption per line (UTF-8; blank lines are an error) and writes, with
a temporary file and an atomic rename, an npz holding:
  captions (N,) str; input_ids, mask (N, T) int32; truncated (N,) bool;
  token_features (N, T, 384) float32 (float16 with --float16), zero at
  padding; sentence_embedding (N, 384) float32; max_len () int32;
  model_sha256 (2,) str (model.safetensors, tokenizer.json).
T is --max_len, or the longest caption (at most 256) when it is 0. Captions
longer than T are truncated with a warning. An existing --output is refused
unless --overwrite. Runs on CPU; the features are deterministic there.
"""

import pathlib

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from toprovar_jax import io
from toprovar_jax.text import minilm_loader

_CAPTIONS = flags.DEFINE_string("captions", None,
                                "Text file, one caption per line.")
_OUTPUT = flags.DEFINE_string("output", None, "The .npz file to write.")
_MAX_LEN = flags.DEFINE_integer(
    "max_len", 0, "Static padded length T (2..512); 0 = longest caption.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Captions per batch.")
_FLOAT16 = flags.DEFINE_bool(
    "float16", False, "Store token_features as float16 (half the size).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Replace an existing --output.")


def _read_captions(path: str) -> list[str]:
  lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
  blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
  if blank:
    raise app.UsageError(f"{path}: blank caption on line(s) {blank[:10]}")
  if not lines:
    raise app.UsageError(f"{path}: no captions")
  return lines


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  output = pathlib.Path(_OUTPUT.value).absolute()
  if output.suffix != ".npz":
    raise app.UsageError(f"--output must end in .npz: {output}")
  if output.exists() and not _OVERWRITE.value:
    raise app.UsageError(f"{output} exists; pass --overwrite to replace it")
  captions = _read_captions(_CAPTIONS.value)
  logging.info("JAX %s on %s; %d captions", jax.__version__, jax.devices(),
               len(captions))

  encoder = minilm_loader.MiniLMEncoder.from_wheel()  # Hash-checked.
  out = minilm_loader.encode_corpus(encoder, captions,
                                    max_len=_MAX_LEN.value or None,
                                    batch_size=_BATCH_SIZE.value)
  if _FLOAT16.value:
    out["token_features"] = out["token_features"].astype(np.float16)
  num_tokens = out["mask"].sum(1)
  logging.info("T=%d; tokens per caption: min %d, mean %.1f, max %d; "
               "%d truncated", out["mask"].shape[1], num_tokens.min(),
               num_tokens.mean(), num_tokens.max(), out["truncated"].sum())

  output.parent.mkdir(parents=True, exist_ok=True)
  # Compressed: the zero padding after each caption's tokens is most of the
  # array (1,898 emoji captions, T=32: 50 MB raw, 14 MB compressed), and the
  # file has to travel to the GPU machine. Atomic: no half-written npz.
  io.write_atomic(output, lambda f: np.savez_compressed(
      f, captions=np.asarray(captions),
      max_len=np.int32(out["mask"].shape[1]),
      model_sha256=np.asarray(list(minilm_loader.EXPECTED_SHA256.values())),
      **out))
  logging.info("Wrote %s", output)


if __name__ == "__main__":
  flags.mark_flags_as_required(["captions", "output"])
  app.run(main)
