r"""Trains the emoji tokenizer or transformer (SPEC §8), resumably.

  python -m experiments.train --workdir=/tmp/emoji_tok \
    --config=configs/emoji_train.py:stage=tokenizer

Rerun the same command to continue from the latest checkpoint; each command
stops before `--config.loop.time_budget_s` (from process start) with a
checkpoint saved. --workdir gets, atomically: config.json, checkpoints/
(orbax, the last 2), metrics.jsonl, curves.json, curves.png,
export/<stage>_NNN.npz + <stage>.manifest.json (bf16, <= 16 MiB a file: the
files to download), export/<stage>/ (the same params as orbax, for
`experiments.generate`), results.json (one entry per command) and, for the
tokenizer, reconstructions.png (held-out emoji over their reconstructions).
"""

import time

_START = time.monotonic()  # the budget counts imports and data loading too

import functools  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from toprovar_jax import io  # noqa: E402
from toprovar_jax.data import augment  # noqa: E402
from toprovar_jax.data import emoji  # noqa: E402
from toprovar_jax.training import data as training  # noqa: E402
from toprovar_jax.training import loop  # noqa: E402
from toprovar_jax.training import tokenizer  # noqa: E402
from toprovar_jax.training import transformer  # noqa: E402
from toprovar_jax.weights import checkpoints  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/emoji_train.py[:stage=...]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (resumed).")
# May change between the commands of one training; nothing else may.
_MUTABLE = ("loop", "train_steps", "data.workers", "data.num_eval",
            "model.attn_impl", "model.remat", "sampling", "sparsity",
            "ckpt.transformer")


def _to_float(batch):  # on device: uint8 -> [-1, 1], as augment.augment does
  return dict(batch, images=batch["images"].astype("float32") / 127.5 - 1.0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config, stage = _CONFIG.value, _CONFIG.value.stage
  logging.info("JAX %s, devices %s\n%s", jax.__version__, jax.devices(), config)
  workdir = loop.check_resume_config(_WORKDIR.value, config.to_dict(),
                                     mutable=_MUTABLE)
  # Later commands of the same lease skip most of the compilation.
  jax.config.update("jax_compilation_cache_dir", str(workdir / "jax_cache"))
  model_cfg, tok_cfg = training.get_models(config.model.variant)
  size = training.image_size(model_cfg, tok_cfg)
  data = emoji.load_dataset(config.data.dataset)
  if data.images.shape[1] != size:
    raise ValueError(f"{config.data.dataset}: {data.images.shape[1]} px "
                     f"images; {config.model.variant} needs {size}")
  train, held = training.split(data)
  eval_rgb = augment.composite(data.images[held])[:config.data.num_eval or None]
  tx, lr_fn = loop.make_optimizer(total_steps=config.train_steps,
                                  **config.optim)
  # RBG for the init: XLA compiles it ~3x faster than threefry's unrolled
  # rounds per parameter. The step keys (text dropout, BSC) stay threefry.
  k_init = jax.random.key(config.seed, impl="rbg")
  k_train = jax.random.fold_in(jax.random.key(config.seed), 1)
  schedule = training.vae_schedule(model_cfg)
  eval_kw = dict(tok_cfg=tok_cfg, schedule=schedule,
                 batch_size=min(64, len(eval_rgb)))
  batch_kw = dict(batch_size=config.batch_size, image_size=size,
                  seed=config.seed, workers=config.data.workers,
                  augment_config=augment.AugmentConfig(**config.augment))
  if stage == "tokenizer":
    objective = tokenizer.TokenizerObjective(
        schedule=schedule, compute_dtype=config.model.dtype,
        **config.tokenizer)
    step = functools.partial(tokenizer.train_step, tok_cfg=tok_cfg, tx=tx,
                             objective=objective)
    stage_kw = dict(
        init_fn=lambda: tokenizer.init_state(tok_cfg, k_init, tx),
        train_step=lambda s, b, r, _: step(s, _to_float(b)["images"], r),
        eval_fn=lambda s: tokenizer.evaluate(s.params, eval_rgb, **eval_kw),
        export_fn=lambda s: {"params": s.params},
        batch_fn=training.make_batch_fn(data.images[train], **batch_kw))
  else:
    text, text_mask = training.caption_features(config.data.captions,
                                                data.captions[train])
    step = functools.partial(
        transformer.train_step, model_cfg=model_cfg, tok_cfg=tok_cfg, tx=tx,
        dtype=config.model.dtype, impl=config.model.attn_impl,
        remat=config.model.remat, **config.transformer)
    stage_kw = dict(
        init_fn=lambda: transformer.init_state(model_cfg, k_init, tx),
        train_step=lambda s, b, r, tok: step(s, tok, _to_float(b), r),
        frozen=tokenizer.load_trained(config.ckpt.tokenizer, tok_cfg),
        export_fn=lambda s: s.params,
        batch_fn=training.make_batch_fn(data.images[train], text=text,
                                        text_mask=text_mask, **batch_kw))
  result = loop.run(
      workdir=workdir, rng=k_train, learning_rate_fn=lr_fn,
      export_name=stage, start_time=_START, **stage_kw,
      config=loop.LoopConfig(num_steps=config.train_steps, **config.loop))
  # An orbax copy beside the npz shards: what `experiments.generate` reads.
  checkpoints.save_params(workdir / loop.EXPORT_DIR / stage, jax.tree.map(
      lambda x: x.astype("bfloat16"), stage_kw["export_fn"](result.state)),
                          overwrite=True)
  if stage == "tokenizer":
    shown = eval_rgb[:8]  # originals over reconstructions
    rec = tokenizer.reconstruct_images(result.state.params, shown, **eval_kw)
    io.save_image_grid(workdir / "reconstructions.png",
                       np.concatenate([shown, rec]), len(shown))
  loop.append_results(workdir, result, stage=stage,
                      variant=config.model.variant,
                      done=result.end_step >= config.train_steps)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
