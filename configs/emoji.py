r"""The embedded emoji model (SPEC §8) as the project's main job.

Six common emoji captions (or those of `prompts_file`, or of a
`--config.sampling.prompts` override), `samples` images each, generated with
the weights that ship inside the package (`toprovar_jax/assets/emoji/`, read
as `ckpt.* = "embedded:emoji"`) twice, with the same seeds: once dense and
once with the hand-written plan `emoji_default` (shipped as
`toprovar_jax/sparsity/plans/emoji_default.json`; see the README there).
Text features are real all-MiniLM-L6-v2 token features. Runs on a 2-core CPU
with no network in under two minutes (README: measured figures).

Arguments after the colon (typed, `configs/common.py:parse_arg`):
  plan=dense          the reference plan: first grid row, PSNR baseline.
  compare=emoji_default  plans to run beside it, '+'-separated ('' = none);
                      each a plan spec ('dense', a named plan shipped
                      under toprovar_jax/sparsity/plans/, a JSON path;
                      'fastvar': FastVAR mapped to this schedule, cache
                      12x12, prune 16x16, exit at 24x24).
  prompts_file=''     a UTF-8 file of one caption a line (blank lines
                      skipped) instead of the six built-in captions.
  samples=1           images per caption (sampling.samples_per_prompt):
                      the number of images follows the captions used.
  batch_size=0        images per generate call; 0 = all in one batch.
  ckpt_dir=''         '' = the embedded weights; else a folder holding
                      `transformer/` and `tokenizer/` (training npz exports
                      or orbax checkpoints).
  bf16                bare word: bfloat16 transformer compute (GPU).

Launch (the README's main command, then variants):
  python -m experiments.generate --config=configs/emoji.py \
    --workdir=workdirs/main --overwrite
  python -m experiments.generate \
    --config=configs/emoji.py:samples=2,compare=emoji_paper+/tmp/mine.json \
    --config.sampling.seed=3 --workdir=/tmp/emoji_compare
  python -m experiments.generate \
    --config=configs/emoji.py:prompts_file=captions.txt,batch_size=8 \
    --workdir=/tmp/emoji_heldout
"""

from configs import common

# Captions of the emoji dataset (`emoji` 2.16.0 names, as in
# .carry/emoji_captions.txt), chosen to be familiar and varied in colour.
PROMPTS = ("grinning face", "red apple", "dog face", "cat face", "rainbow",
           "pizza")
# The emoji variant's text_maxlen (its cfg_uncond rows) and the --max_len
# its training captions were encoded with (experiments/encode_captions.py).
TEXT_LEN = 32
EMBEDDED = "embedded:emoji"


def get_config(arg=None):
  """Returns the locked config of the main job (see module docstring)."""
  arg = common.parse_arg(arg, plan="dense", compare="emoji_default", samples=1,
                         batch_size=0, ckpt_dir="", bf16=False,
                         prompts_file="")
  if arg.samples < 1:
    raise ValueError(f"config arg 'samples': must be >= 1, got {arg.samples}")
  if arg.batch_size < 0:
    raise ValueError(f"config arg 'batch_size': must be >= 0 (0 = all in "
                     f"one batch), got {arg.batch_size}")
  config = common.get_base_config(
      # The image count (captions x samples) and, with batch_size 0, the
      # batch follow the captions the run ends up with (pipeline, runner).
      variant="emoji", batch_size=arg.batch_size, prompts=PROMPTS,
      prompts_file=arg.prompts_file, samples_per_prompt=arg.samples,
      text_len=TEXT_LEN, plan=arg.plan,
      ckpt_dir=arg.ckpt_dir, dtype=common.dtype_name(arg.bf16),
      # common.EMOJI_SAMPLING: Infinity-2B's rules (cfg 3, τ 0.5, top-p
      # 0.97) until the sweep on the trained v2 weights sets them.
      **common.sampling_defaults("emoji"))
  with config.unlocked():
    # No per-layer copy of the KV-cache prefix (the same numbers): on 2 CPU
    # cores the dense six captions take 44 % less CPU time to generate.
    config.sampling.kv_read = "buffer"
    # Plans run beside sparsity.plan with the same seeds and captions,
    # comma-separated (pipeline.plan_specs); '' = sparsity.plan only.
    config.sparsity.compare = ",".join(
        p for p in arg.compare.split("+") if p)
    if not arg.ckpt_dir:
      # The weights packaged under toprovar_jax/assets/emoji (npz shards).
      config.ckpt.transformer = EMBEDDED
      config.ckpt.tokenizer = EMBEDDED
  config.lock()
  return config
