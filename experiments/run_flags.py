"""The flags shared by the mains that run a model config over prompts.

`generate`, `evaluate`, `calibrate`, `calibrate_adaptive`, `train_skipvar`
and `convert_checkpoint` take a config, prompts, plans, a seed and an
output; absl keeps one flag registry per process, so each of these flags is
defined here once and the mains import the holders they use. Defining them
in every main made any process that imports two mains (a test run, a
notebook, a driver script) fail with `DuplicateFlagError`;
tests/experiments/run_flags_test.py imports every main of `experiments/`
that uses this module in one process to keep it that way.

One flag, one meaning: `--seed` and `--batch_size` default to the config's
(`config.sampling.seed`, `config.sampling.batch_size`) in every main.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/emoji.py[:key=value,...].",
    lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Output folder of the run.")
OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Allow a workdir that already holds files (its old "
    "outputs are replaced).")
PROMPTS = flags.DEFINE_string(
    "prompts", None, "Text file: one prompt (or VAR class label) per line.")
SEED = flags.DEFINE_integer(
    "seed", None, "Seed: image j gets fold_in(key(seed), j) (default: the "
    "config's sampling.seed).")
NUM_IMAGES = flags.DEFINE_integer(
    "num_images", 0, "Images; prompts cycle (0 = one per prompt line).")
PLANS = flags.DEFINE_list(
    "plans", [], "Plan specs, comma-separated: dense, fastvar, skipvar, "
    "adaptive:PATH, a named plan, a plan JSON path, skipvar_skipK[_uncondS] "
    "(the main's docstring says what it does with them).")
NAME = flags.DEFINE_string(
    "name", "", "Name of the plan / method the main makes ('' = its "
    "default; the main's docstring says which).")
OUT = flags.DEFINE_string(
    "out", None, "The file or folder the main writes (its docstring says "
    "which).")
BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 0, "Images per generate call (0 = the config's "
    "sampling.batch_size).")


flags.register_validator("batch_size", lambda v: v >= 0,
                         "--batch_size must be >= 0")
flags.register_validator("num_images", lambda v: v >= 0,
                         "--num_images must be >= 0")

_ALL = ("config", "workdir", "overwrite", "prompts", "seed", "num_images",
        "plans", "name", "out", "batch_size")


def refuse_unused(main: str, *used: str) -> None:
  """Stops a main that was given a shared flag it does not read.

  Every main of the process sees every flag defined here, so without this
  `generate --batch_size=8` would be accepted and silently ignored.

  Raises:
    app.UsageError: naming the flag and the main.
  """
  used = set(used)
  for name in _ALL:
    if name not in used and flags.FLAGS[name].present:
      raise app.UsageError(f"--{name} is not a flag of {main}")


def seed(config) -> int:
  """--seed, else the config's sampling seed."""
  return config.sampling.seed if SEED.value is None else SEED.value


def batch_size(config) -> int:
  """--batch_size, else the config's sampling batch size."""
  return BATCH_SIZE.value or config.sampling.batch_size
