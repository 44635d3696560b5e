r"""VAR-d36-s: 2.354B params, 512 px, shared AdaLN, class-conditional.

Weights: the official checkpoint converted to orbax
(`<ckpt_dir>/transformer`, `<ckpt_dir>/tokenizer`); without `ckpt_dir` the
run uses random parameters and says so in its logs and results.json.

Arguments after the colon (typed, `configs/common.py:parse_arg`):
  plan=dense        'dense' | 'fastvar' | named plan | plan JSON path.
  batch_size=8      samples per generate call.
  ckpt_dir=''       folder holding the converted orbax checkpoints.
  bf16              bare word: bfloat16 transformer compute.

Launch:
  python -m experiments.generate \
    --config=configs/var_d36.py:plan=dense,ckpt_dir=/ckpts/var_d36 \
    --config.sampling.cfg_scale=1.5 \
    --config.sampling.labels="(207, 360, 387, 974)" \
    --workdir=/tmp/var_d36_dense
"""

from configs import common


def get_config(arg=None):
  """Returns the locked generation config of var_d36."""
  return common.size_config("var_d36", arg, batch_size=8)
