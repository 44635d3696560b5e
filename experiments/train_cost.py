r"""Parameter count and FLOPs of one training step of a stage (no data, no GPU).

  python -m experiments.train_cost --config=configs/emoji_train.py:stage=transformer \
    --out=/tmp/emoji_cost.json

Lowers the stage's jitted train step (the one `experiments/train.py` runs,
with the config's batch size, compute dtype, attention and remat settings)
on abstract inputs and reads XLA's FLOP count of the lowered program. XLA
counts the body of a `lax.scan` once, whatever its trip count, so the
program is lowered with every scan unrolled (`unroll=True`; same operations,
nothing is compiled). Prints and, with --out, writes (atomically) JSON:
params, flops_per_step, flops_per_sample, batch_size, and for the
transformer the sequence length.
"""

import functools
from unittest import mock

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags
import optax

from toprovar_jax import io
from toprovar_jax.training import data as training
from toprovar_jax.training import loop
from toprovar_jax.training import tokenizer
from toprovar_jax.training import transformer

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/emoji_train.py[:stage=...]", lock_config=True)
_OUT = flags.DEFINE_string("out", None, "JSON file to write.")


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  model_cfg, tok_cfg = training.get_models(config.model.variant)
  size, b = training.image_size(model_cfg, tok_cfg), config.batch_size
  tx, _ = loop.make_optimizer(total_steps=config.train_steps, **config.optim)
  key = jax.random.key(0)
  images = jax.ShapeDtypeStruct((b, size, size, 3), jnp.float32)
  tok_params = jax.eval_shape(lambda: {"params": tokenizer.init_state(
      tok_cfg, key, optax.identity()).params})
  if config.stage == "tokenizer":
    state = jax.eval_shape(lambda: tokenizer.init_state(tok_cfg, key, tx))
    step = functools.partial(tokenizer.train_step, tok_cfg=tok_cfg, tx=tx,
                             objective=tokenizer.TokenizerObjective(
                                 schedule=training.vae_schedule(model_cfg),
                                 compute_dtype=config.model.dtype,
                                 **config.tokenizer))
    args = (state, images, key)
    extra = {}
  else:
    state = jax.eval_shape(lambda: transformer.init_state(model_cfg, key, tx))
    t = config.sampling.text_len
    batch = dict(images=images,
                 text=jax.ShapeDtypeStruct((b, t, model_cfg.text_dim),
                                           jnp.float32),
                 text_mask=jax.ShapeDtypeStruct((b, t), jnp.bool_))
    step = functools.partial(
        transformer.train_step, model_cfg=model_cfg, tok_cfg=tok_cfg, tx=tx,
        dtype=config.model.dtype, impl=config.model.attn_impl,
        remat=config.model.remat, **config.transformer)
    args = (state, tok_params, batch, key)
    extra = dict(seq_len=model_cfg.seq_len)
  scan = jax.lax.scan
  with mock.patch.object(jax.lax, "scan", functools.partial(scan,
                                                            unroll=True)):
    flops = float(jax.jit(step).lower(*args).cost_analysis()["flops"])
  out = dict(stage=config.stage, variant=config.model.variant,
             params=_count(state.params), batch_size=b,
             flops_per_step=flops, flops_per_sample=flops / b,
             attn_impl=config.model.attn_impl, remat=config.model.remat,
             dtype=config.model.dtype, **extra)
  if config.stage == "transformer":
    out["frozen_tokenizer_params"] = _count(tok_params)
  print(out)
  if _OUT.value:
    io.write_json_atomic(_OUT.value, out)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
