r"""Infinity-8B: 40 blocks, width 3584, 56-bit 2x2-patchified tokens, 1024 px.

Weights, text (t5_dir) and arguments after the colon (plan=, batch_size=2,
ckpt_dir=, bf16, t5_dir=, h_div_w=, pixels=, prompts_file=) are those of
configs/infinity_2b.py, with infinity_8b for infinity_2b; sampling follows
the 8B notebooks (τ 1.0).

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
