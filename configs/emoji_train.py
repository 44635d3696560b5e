r"""The embedded emoji model (SPEC §8): training both stages, then sampling.

Arguments after the colon (typed, `configs/common.py:parse_arg`):
  stage=tokenizer   'tokenizer' (BSQ VAE) or 'transformer' (needs the first).
  tiny              bare word: the CPU smoke-test size (`_emoji_tiny`, 32 px;
                    training only, `generate` does not know that variant).

Train (each command stops before `loop.time_budget_s` with a checkpoint;
rerun it to continue, until results.json says "done": true):
  python -m experiments.train --workdir=/tmp/emoji_tok \
    --config=configs/emoji_train.py:stage=tokenizer \
    --config.data.dataset=/tmp/emoji128/emoji_128.npz
  python -m experiments.train --workdir=/tmp/emoji_tf \
    --config=configs/emoji_train.py:stage=transformer \
    --config.ckpt.tokenizer=/tmp/emoji_tok --config.loop.time_budget_s=540

Sample with the trained weights (orbax copies under each export/):
  python -m experiments.generate --workdir=/tmp/emoji_samples \
    --config=configs/emoji_train.py:stage=transformer \
    --config.ckpt.transformer=/tmp/emoji_tf/export/transformer \
    --config.ckpt.tokenizer=/tmp/emoji_tok/export/tokenizer

Inputs: `experiments/build_emoji_dataset.py` (dataset npz) and
`experiments/encode_captions.py` (caption features npz: captions,
token_features, mask).

Sizing (model v2: `experiments/train_cost.py` prints XLA's FLOP count of a
step; the GPU plan is in scripts/train_emoji_gpu.sh):
  tokenizer    3.37M params (encoder 1.35M, decoder 2.02M), stride 4, batch
               64.
  transformer  10.1M params, 16 layers x 192, 2,304 tokens, batch 64; XLA
               attention keeps (B, H, L, L) probabilities per layer, so it
               runs with `model.remat` (blocks recomputed in the backward
               pass); cuDNN attention (flash) needs no remat.
"""

from configs import common

_PROMPTS = ("red apple", "grinning face", "dog face", "rainbow")


def get_config(arg=None):
  """The locked config: generation groups of `common` plus training ones."""
  arg = common.parse_arg(arg, stage="tokenizer", tiny=False)
  if arg.stage not in ("tokenizer", "transformer"):
    raise ValueError(f"config arg 'stage': expected tokenizer or "
                     f"transformer, got {arg.stage!r}")
  tok_stage, tiny = arg.stage == "tokenizer", arg.tiny
  # text_len 32 = the emoji variant's text_maxlen (its cfg_uncond rows).
  config = common.get_base_config(
      variant="emoji", batch_size=4, prompts=_PROMPTS, text_len=32,
      dtype="float32" if tiny else "bfloat16",
      **common.sampling_defaults("emoji"))
  with config.unlocked():
    # Which model trains in this workdir: 'tokenizer' or 'transformer'.
    config.stage = arg.stage
    if tiny:  # test-only variant (toprovar_jax.models.config VARIANTS)
      config.model.variant = "_emoji_tiny"
    # Transformer self-attention in training: 'xla' | 'cudnn' | 'pallas'.
    config.model.attn_impl = "xla"
    # Recompute every block in the backward pass (jax.checkpoint) instead of
    # keeping its activations: needed with 'xla' attention at v2's 2,304
    # tokens (a layer's probabilities are ~4 GB at batch 64).
    config.model.remat = not tiny
    # The transformer stage reads the trained tokenizer from ckpt.tokenizer:
    # the tokenizer workdir, its export/ folder or an orbax params folder.

    config.data = dict(
        # `experiments/build_emoji_dataset.py` output (its docstring's path).
        dataset="/tmp/emoji128/emoji_128.npz",
        # `experiments/encode_captions.py` output (transformer stage).
        captions="/tmp/emoji_text.npz",
        # Held-out emoji (on white) in the tokenizer eval; 0 = all of them.
        num_eval=128,
        # Threads augmenting slices of one batch (numpy releases the GIL);
        # 12 of the GPU machine's 16 cores. Results do not depend on it.
        workers=2 if tiny else 12)

    # data.augment.AugmentConfig. The tokenizer sees mostly random background
    # colours (it must reconstruct any colour); the transformer sees white,
    # the evaluation background: a caption says nothing about a background,
    # so random colours would only add an unconditioned mode to the samples.
    config.augment = dict(shift_frac=0.06, scale_min=0.85, scale_max=1.0,
                          white_prob=0.2 if tok_stage else 1.0)

    # Images per step, and optimiser steps over all commands.
    # (experiments/train_emoji.py replaces train_steps with what its rate
    # probe fits into the time budget.)
    config.batch_size = 8 if tiny else 64
    config.train_steps = 6 if tiny else (6000 if tok_stage else 10000)

    config.optim = dict(
        # Peak AdamW rate; linear warmup, then cosine to end_lr_frac * peak.
        learning_rate=4e-4 if tok_stage else 1e-3,
        # The rate probe of train_emoji.py stays inside the warm-up.
        warmup_steps=2 if tiny else (500 if tok_stage else 400),
        end_lr_frac=0.05,
        # Decoupled, on matrices / kernels only (loop.make_optimizer).
        weight_decay=0.0 if tok_stage else 0.05,
        b1=0.9,
        # 0.99 for the autoencoder; GPT-style 0.95 for the transformer.
        b2=0.99 if tok_stage else 0.95,
        # Global gradient-norm clip (0 = off).
        grad_clip=1.0)

    # training.tokenizer.TokenizerObjective: l1 * L1 + l2 * L2 + commit *
    # commitment; flip_prob flips quantiser bits (decoder sees wrong bits).
    config.tokenizer = dict(l1_weight=1.0, l2_weight=1.0, commit_weight=0.25,
                            flip_prob=0.0)
    # training.transformer.train_step: classifier-free text dropout and the
    # Bitwise Self-Correction max flip probability (0 = off).
    config.transformer = dict(cond_drop=0.1, bsc=0.0)

    # training.loop.LoopConfig (all of it may change between commands).
    config.loop = dict(
        # Seconds from process start; 540 leaves a minute of the 10-minute
        # command limit for start-up and slack (0 = no budget).
        time_budget_s=0.0 if tiny else 540.0,
        # Kept back for the final eval, save, curves and export.
        reserve_s=5.0 if tiny else 30.0,
        log_every_steps=2 if tiny else 50,
        checkpoint_every_steps=3 if tiny else 1000,
        # Tokenizer PSNR / SSIM; 0 = only at the end of each command.
        eval_every_steps=0 if tiny else 1000,
        keep_checkpoints=2,
        # Batches prepared ahead of the device.
        prefetch=2 if tiny else 4,
        # Largest exported npz file (what leaves the GPU machine): 16 MiB.
        export_max_bytes=16 * 2**20)
  config.lock()
  return config
