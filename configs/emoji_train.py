r"""Training the embedded emoji model (SPEC §8): tokenizer, then transformer.

  python -m experiments.train --workdir=/tmp/emoji_tok \
    --config=configs/emoji_train.py:stage=tokenizer \
    --config.data.dataset=/tmp/emoji128/emoji_128.npz
  python -m experiments.train --workdir=/tmp/emoji_tf \
    --config=configs/emoji_train.py:stage=transformer \
    --config.tokenizer_ckpt=/tmp/emoji_tok --config.time_budget_s=540

Each command trains until `train_steps` or until `time_budget_s` is nearly
spent, saves, and exits; rerun the same command to continue. The inputs are
built by `experiments/build_emoji_dataset.py` (dataset npz) and
`experiments/encode_captions.py` (caption features npz: captions,
token_features, mask). `:tiny` is the CPU smoke-test size.

Sizing for one H200 (estimates, see training/loop.py for the budget logic):
  tokenizer    5.1M params, ~2.6 TFLOP a step at batch 64 (XLA count);
               ~15-25 steps/s -> 6k steps in ~4-7 min, one command.
  transformer  9.4M params, L = 655 tokens, ~6 TFLOP a step at batch 128
               (frozen encoder forward included); ~10-20 steps/s -> 10k
               steps in ~8-17 min, one or two commands.
"""

import ml_collections

from configs import common


def get_config(arg=None):
  """The locked training config; `arg` is `stage=...,tiny`."""
  arg = common.parse_arg(arg, stage="tokenizer", tiny=False)
  if arg.stage not in ("tokenizer", "transformer"):
    raise ValueError(f"config arg 'stage': expected tokenizer or "
                     f"transformer, got {arg.stage!r}")
  tok_stage = arg.stage == "tokenizer"
  config = ml_collections.ConfigDict()
  # Which model trains in this workdir: 'tokenizer' or 'transformer'.
  config.stage = arg.stage

  config.model = ml_collections.ConfigDict()
  # Row of toprovar_jax/models/config.py VARIANTS (tokenizer: TOKENIZERS).
  config.model.variant = "_emoji_tiny" if arg.tiny else "emoji"
  # Compute dtype of convolutions / transformer blocks; params stay float32.
  config.model.dtype = "float32" if arg.tiny else "bfloat16"
  # Self-attention of the transformer: 'xla' | 'cudnn' | 'pallas' | 'auto'.
  config.model.attn_impl = "xla"

  config.data = ml_collections.ConfigDict()
  # `experiments/build_emoji_dataset.py` output (its docstring's path).
  config.data.dataset = "/tmp/emoji128/emoji_128.npz"
  # `experiments/encode_captions.py` output (transformer stage only).
  config.data.captions = "/tmp/emoji_text.npz"
  # Held-out emoji (composited on white) used by the tokenizer eval; 0 = all.
  config.data.num_eval = 128
  # Threads that augment one batch in parallel (numpy releases the GIL).
  config.data.workers = 2 if arg.tiny else 8
  # Batches prepared ahead of the device.
  config.data.prefetch = 2 if arg.tiny else 4

  # Images per step.
  config.batch_size = (8 if arg.tiny else 64) if tok_stage else (
      8 if arg.tiny else 128)
  # Optimiser steps in all (the budget may split them over several runs).
  config.train_steps = 6 if arg.tiny else (6000 if tok_stage else 10000)

  config.optim = ml_collections.ConfigDict()
  # Peak AdamW learning rate (VQGAN-style 1e-4 is slow for 10 min; the
  # small models tolerate more).
  config.optim.learning_rate = 4e-4 if tok_stage else 1e-3
  # Linear warmup, then cosine decay to end_lr_frac * peak.
  config.optim.warmup_steps = 2 if arg.tiny else 500
  config.optim.end_lr_frac = 0.05
  # Decoupled weight decay on matrices / kernels only.
  config.optim.weight_decay = 0.0 if tok_stage else 0.05
  config.optim.b1 = 0.9
  # 0.95 (GPT-style) for the transformer; 0.99 for the autoencoder.
  config.optim.b2 = 0.99 if tok_stage else 0.95
  # Global gradient-norm clip (0 = off).
  config.optim.grad_clip = 1.0

  config.tokenizer = ml_collections.ConfigDict()
  # Loss = l1 * L1 + l2 * L2 + commit * commitment (training/tokenizer.py).
  config.tokenizer.l1_weight = 1.0
  config.tokenizer.l2_weight = 1.0
  config.tokenizer.commit_weight = 0.25
  # Per-bit flip probability in the quantiser (decoder sees wrong bits).
  config.tokenizer.flip_prob = 0.0

  config.transformer = ml_collections.ConfigDict()
  # Classifier-free guidance: probability of replacing the text by uncond.
  config.transformer.cond_drop = 0.1
  # Bitwise Self-Correction: max bit-flip probability (0 = off).
  config.transformer.bsc = 0.0
  # Tokenizer for the transformer stage: its workdir, its export/ folder, or
  # an orbax params checkpoint ({"params": ...}).
  config.tokenizer_ckpt = ""

  # Wall-clock budget of one command from process start, seconds (0 = none):
  # 540 leaves a minute of the 10-minute limit for start-up and slack.
  config.time_budget_s = 0.0 if arg.tiny else 540.0
  # Seconds kept back for the final eval, save, curves and export.
  config.reserve_s = 5.0 if arg.tiny else 30.0
  config.log_every_steps = 2 if arg.tiny else 50
  config.checkpoint_every_steps = 3 if arg.tiny else 1000
  # Tokenizer eval (PSNR / SSIM) interval; 0 = only at the end of a run.
  config.eval_every_steps = 0 if arg.tiny else 1000
  config.keep_checkpoints = 2
  # Largest exported npz file (the files that leave the GPU machine).
  config.export_max_mib = 16
  # Seeds the init, the per-step keys and the per-step numpy batches.
  config.seed = 0

  config.lock()
  return config
