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
  arg = common.parse_arg(arg, plan="dense", batch_size=4, ckpt_dir="",
                         bf16=False)
  return common.get_base_config(
      variant="infinity_2b", batch_size=arg.batch_size, plan=arg.plan,
      ckpt_dir=arg.ckpt_dir, dtype=common.dtype_name(arg.bf16),
      text_len=common.INFINITY_TEXT_LEN, **common.INFINITY_SAMPLING)
