r"""Where a tokenizer paints on a flat background, and why (issue 12's speck).

  python -m experiments.check_tokenizer_background --variant=emoji_v1 \
    --tokenizer=/tmp/emoji_v1 --dataset=.carry/emoji128/emoji_128.npz \
    --out=/tmp/speck_v1.json

Reconstructs the held-out emoji (on white) four ways and measures each with
`metrics.background.background_deviation` (per-position mean distance from
white where the emoji has no ink: its peak, where it is, and each corner):
  reconstruction   encode -> multi-scale BSQ (the generation schedule) ->
                   decode, as the sampler's images are decoded;
  shifted          the same emoji moved 24 px right and down first: a peak
                   that stays put is drawn by the network at a fixed place,
                   not by the content;
  unquantised      the encoder output decoded without BSQ: a peak here is
                   not the quantiser's (nor the sampler's, whose bits only
                   replace the quantiser's);
  padded_latent    the quantised latent padded by 4 cells of copies of its
                   edge, decoded, then cropped back: a peak that vanishes
                   comes from the decoder's border (its padding).
Writes the JSON (atomically) to --out when given, and prints it.
"""

import functools
import json

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax import io
from toprovar_jax.data import augment
from toprovar_jax.data import emoji
from toprovar_jax.metrics import background
from toprovar_jax.models import bsq_vae
from toprovar_jax.training import data as training
from toprovar_jax.training import tokenizer

_VARIANT = flags.DEFINE_string("variant", "emoji", "Model variant.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Tokenizer export.")
_DATASET = flags.DEFINE_string("dataset", None, "build_emoji_dataset npz.")
_OUT = flags.DEFINE_string("out", None, "JSON file to write.")
_SHIFT, _PAD = 24, 4


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  model, tok = training.get_models(_VARIANT.value)
  params = tokenizer.load_trained(_TOKENIZER.value, tok)
  data = emoji.load_dataset(_DATASET.value)
  _, held = training.split(data)
  rgba = data.images[held]
  shifted = np.zeros_like(rgba)
  shifted[:, _SHIFT:, _SHIFT:] = rgba[:, :-_SHIFT, :-_SHIFT]
  schedule = training.vae_schedule(model)
  vae = bsq_vae.BSQVAE(tok)

  @functools.partial(jax.jit, static_argnames="how")
  def run(x, how):
    x = x.astype(jnp.float32) / 127.5 - 1.0
    h = vae.apply(params, x, method=bsq_vae.BSQVAE.encode_h)
    z = h if how == "unquantised" else bsq_vae.multiscale_quantize(
        h, schedule)[1]
    if how == "padded_latent":
      z = jnp.pad(z, ((0, 0), (_PAD, _PAD), (_PAD, _PAD), (0, 0)),
                  mode="edge")
    out = vae.apply(params, z, method=bsq_vae.BSQVAE.decode)
    if how == "padded_latent":
      c = _PAD * tok.stride
      out = out[:, c:-c, c:-c]
    return jnp.clip(jnp.floor((out + 1.0) * 127.5 + 0.5), 0, 255).astype(
        jnp.uint8)

  def measure(images, how):
    out = np.concatenate([np.asarray(run(augment.composite(images[i:i + 32]),
                                         how))
                          for i in range(0, len(images), 32)])
    return background.background_deviation(out, images)

  results = dict(
      variant=_VARIANT.value, tokenizer=_TOKENIZER.value,
      padding=tok.padding, num_images=int(held.sum()),
      reconstruction=measure(rgba, "reconstruction"),
      shifted=measure(shifted, "reconstruction"),
      unquantised=measure(rgba, "unquantised"),
      padded_latent=measure(rgba, "padded_latent"))
  print(json.dumps(results, indent=1))
  if _OUT.value:
    io.write_json_atomic(_OUT.value, results)


if __name__ == "__main__":
  flags.mark_flags_as_required(["tokenizer", "dataset"])
  app.run(main)
