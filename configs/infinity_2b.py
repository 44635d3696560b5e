r"""Infinity-2B: 32 blocks, width 2048, d=32 bits, 1024 px (13 scales), T2I.

Weights: the official checkpoint converted to orbax
(`<ckpt_dir>/transformer`, `<ckpt_dir>/tokenizer`); without `ckpt_dir` the
run uses random parameters and says so in its logs and results.json.

Text: with `t5_dir` (the downloaded flan-t5-xl folder: config.json,
safetensors or pytorch_model*.bin, tokenizer.json or spiece.model) prompts
are encoded by Flan-T5 (`toprovar_jax.text.flan_t5`, 512-token cap with a
warning). Without it they become deterministic placeholder features
(`toprovar_jax.text.features.placeholder_text_features`), reported as such
in results.json; images then do not follow the prompt.

Arguments after the colon (typed, `configs/common.py:parse_arg`):
  plan=dense        'dense' | 'fastvar' | named plan (e.g.
                    infinity_2b_paper) | plan JSON path.
  batch_size=4      samples per generate call.
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
    --config=configs/infinity_2b.py:plan=dense,ckpt_dir=/ckpts/infinity_2b,t5_dir=/ckpts/flan-t5-xl \
    --config.sampling.cfg_scale=4.0 \
    --config.sampling.prompts="('a red fox in snow', 'a lighthouse')" \
    --workdir=/tmp/infinity_2b_dense
"""

from configs import common


def get_config(arg=None):
  """Returns the locked generation config of infinity_2b."""
  return common.size_config("infinity_2b", arg, batch_size=4)
