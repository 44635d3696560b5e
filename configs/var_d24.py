r"""VAR-d24: 1.033B params, 256 px, 10 scales, class-conditional.

Weights and arguments after the colon (plan=, batch_size=8, ckpt_dir=,
bf16) are those of configs/var_d16.py, with var_d24 for
var_d16.

Launch:
  python -m experiments.generate \
    --config=configs/var_d24.py:plan=dense,ckpt_dir=/ckpts/var_d24 \
    --config.sampling.cfg_scale=1.5 \
    --config.sampling.labels="(207, 360, 387, 974)" \
    --workdir=/tmp/var_d24_dense
"""

from configs import common


def get_config(arg=None):
  """Returns the locked generation config of var_d24."""
  return common.size_config("var_d24", arg, batch_size=8)
