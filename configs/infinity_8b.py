r"""Infinity-8B: 40 blocks, width 3584, 56-bit 2x2-patchified tokens, 1024 px.

Weights: the official checkpoint converted to orbax
(`<ckpt_dir>/transformer`, `<ckpt_dir>/tokenizer`); without `ckpt_dir` the
run uses random parameters and says so in its logs and results.json.

Text: until the Flan-T5 encoder lands, prompts become deterministic
placeholder features (`toprovar_jax.pipeline.placeholder_text_features`),
reported as such in results.json; images then do not follow the prompt.

Arguments after the colon (typed, `configs/common.py:parse_arg`):
  plan=dense        'dense' | 'fastvar' | named plan | plan JSON path.
  batch_size=2      samples per generate call.
  ckpt_dir=''       folder holding the converted orbax checkpoints.
  bf16              bare word: bfloat16 transformer compute.

Launch:
  python -m experiments.generate \
    --config=configs/infinity_8b.py:plan=dense,ckpt_dir=/ckpts/infinity_8b \
    --config.sampling.cfg_scale=4.0 \
    --config.sampling.prompts="('a red fox in snow', 'a lighthouse')" \
    --workdir=/tmp/infinity_8b_dense
"""

from configs import common


def get_config(arg=None):
  """Returns the locked generation config of infinity_8b."""
  # 8B notebooks: cfg 3, τ 1.0 (ARCHITECTURES B.6); otherwise as 2B.
  return common.size_config("infinity_8b", arg, batch_size=2, tau=1.0)
