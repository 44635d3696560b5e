r"""Infinity-8B: 40 blocks, width 3584, 56-bit 2x2-patchified tokens, 1024 px.

Weights: the official checkpoint converted to orbax
(`<ckpt_dir>/transformer`, `<ckpt_dir>/tokenizer`); without `ckpt_dir` the
run uses random parameters and says so in its logs and results.json.

Text: Flan-T5 features from `t5_dir`, else labelled placeholder features,
exactly as in configs/infinity_2b.py.

Arguments after the colon (typed, `configs/common.py:parse_arg`):
  plan=dense        'dense' | 'fastvar' | named plan | plan JSON path.
  batch_size=2      samples per generate call.
  ckpt_dir=''       folder holding the converted orbax checkpoints.
  bf16              bare word: bfloat16 transformer compute.
  t5_dir=''         the Flan-T5 folder ('' = placeholder text features).
  h_div_w=1.0       one of the 15 official h/w templates (0.333 ... 3.0).
  pixels=''         '0.06M' | '0.25M' | '0.60M' | '1M' ('' = 1M).
  prompts_file=''   a UTF-8 file of one prompt a line (blank lines
                    skipped) instead of the built-in prompts; one image
                    per prompt (sampling.samples_per_prompt each).

Launch:
  python -m experiments.generate \
    --config=configs/infinity_8b.py:plan=dense,ckpt_dir=/ckpts/infinity_8b,t5_dir=/ckpts/flan-t5-xl \
    --config.sampling.cfg_scale=4.0 \
    --config.sampling.prompts="('a red fox in snow', 'a lighthouse')" \
    --workdir=/tmp/infinity_8b_dense
"""

from configs import common


def get_config(arg=None):
  """Returns the locked generation config of infinity_8b."""
  # 8B notebooks: cfg 3, τ 1.0 (ARCHITECTURES B.6); otherwise as 2B.
  return common.size_config("infinity_8b", arg, batch_size=2, tau=1.0)
