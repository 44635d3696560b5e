r"""Infinity-2B: 32 blocks, width 2048, d=32 bits, 1024 px (13 scales), T2I.

Weights: the official checkpoint converted to orbax
(`<ckpt_dir>/transformer`, `<ckpt_dir>/tokenizer`); without `ckpt_dir` the
run uses random parameters and says so in its logs and results.json.

Text: until the Flan-T5 encoder lands, prompts become deterministic
placeholder features (`toprovar_jax.pipeline.placeholder_text_features`),
reported as such in results.json; images then do not follow the prompt.

Arguments after the colon (typed, `configs/common.py:parse_arg`):
  plan=dense        'dense' | 'fastvar' | named plan (e.g.
                    infinity_2b_paper) | plan JSON path.
  batch_size=4      samples per generate call.
  ckpt_dir=''       folder holding the converted orbax checkpoints.
  bf16              bare word: bfloat16 transformer compute.

Launch:
  python -m experiments.generate \
    --config=configs/infinity_2b.py:plan=dense,ckpt_dir=/ckpts/infinity_2b \
    --config.sampling.cfg_scale=4.0 \
    --config.sampling.prompts="('a red fox in snow', 'a lighthouse')" \
    --workdir=/tmp/infinity_2b_dense
"""

from configs import common


def get_config(arg=None):
  """Returns the locked generation config of infinity_2b."""
  return common.size_config("infinity_2b", arg, batch_size=4)
