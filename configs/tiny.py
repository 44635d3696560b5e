r"""Tiny test-only models that run end to end on a CPU in seconds.

`var_tiny` (default): VAR style, depth 2, 256 codes, 256 px from 10 scales.
`infinity_tiny` (`:model=infinity_tiny`): Infinity style, depth 2, 16 bits,
7 scales up to 16x16 (256 px), placeholder text features (no T5).
Both are the golden-file configs of `shared/reference` and start from random
parameters unless `ckpt_dir` is given.

Arguments after the colon (typed, `configs/common.py:parse_arg`):
  model=var_tiny    'var_tiny' | 'infinity_tiny'.
  plan=dense        'dense' | plan JSON path ('fastvar' and the named
                    plans are written for full-size schedules).
  batch_size=2      samples per generate call.
  ckpt_dir=''       folder holding orbax `transformer/` and `tokenizer/`.
  t5_dir=''         infinity_tiny: a Flan-T5 folder of width 256 for the
                    prompt features ('' = placeholder features).
  h_div_w=1.0       infinity_tiny: official h/w template ...
  pixels=''         ... and budget ('0.06M' is its own schedule's size).
  prompts_file=''   infinity_tiny: a UTF-8 file of one prompt a line
                    (blank lines skipped) instead of the two built-in
                    prompts; one image per prompt.

Launch:
  python -m experiments.generate \
    --config=configs/tiny.py:model=infinity_tiny,batch_size=2 \
    --config.sampling.seed=3 \
    --workdir=/tmp/tiny_infinity
"""

from configs import common

_TINY_MODELS = ("var_tiny", "infinity_tiny")


def get_config(arg=None):
  """Returns the locked config of a tiny model (see module docstring)."""
  arg = common.parse_arg(arg, model="var_tiny", plan="dense", batch_size=2,
                         ckpt_dir="", t5_dir="", h_div_w=1.0, pixels="",
                         prompts_file="")
  if arg.model not in _TINY_MODELS:
    raise ValueError(f"config arg 'model': {arg.model!r} is not a tiny "
                     f"model; known: {list(_TINY_MODELS)}")
  config = common.get_base_config(
      variant=arg.model, batch_size=arg.batch_size, plan=arg.plan,
      ckpt_dir=arg.ckpt_dir, t5_dir=arg.t5_dir, h_div_w=arg.h_div_w,
      pixels=arg.pixels, prompts_file=arg.prompts_file,
      # Two conditions, one batch: the smallest run that exercises CFG
      # batch doubling and per-row sampling.
      labels=(207, 88), prompts=("a red apple", "a small blue car"),
      # A short static T keeps the cross-attention tiny.
      text_len=32, **common.sampling_defaults(arg.model))
  return config
