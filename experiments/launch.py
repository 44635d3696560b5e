"""How a main starts and how it fails (SPEC §11).

`launch.run(main)` replaces `absl.app.run(main)` in the mains a user runs.
A user's mistake gets one line on stderr and exit status 2 (absl's
usage-error convention); a bug keeps its traceback:

  * flag and config errors (a bad `--config` file or argument, a
    `--config.x=v` override of a field that does not exist, a missing
    required flag): `NAME: error: flag --config=...: ValueError: ...`, 2;
  * the input errors of the library (`INPUT_ERRORS`: a bad plan, a corrupt
    or mismatched weight file, a workdir that cannot be used, ...) wherever
    they are raised, and any ValueError / OSError / KeyError raised inside
    `with launch.input_phase():` — the block where a main turns its flags
    and config into objects, before any compute: one line, 2;
  * `runner.NonFiniteError` (NaN / inf logits; nothing was written): one
    line naming the scale and layer, exit 1 — the run failed, not the user;
  * anything else propagates with its traceback (an internal error).
"""

import contextlib
import pathlib
import sys
from typing import Callable, NoReturn

from absl import app
from absl import flags

from toprovar_jax import io
from toprovar_jax.convert import pth
from toprovar_jax.sampling import runner
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.text import minilm_loader
from toprovar_jax.weights import shards
from toprovar_jax.weights import strict

# Raised by the library only for what a user handed it.
INPUT_ERRORS = (plan_lib.PlanError, shards.WeightsError, strict.ConversionError,
                pth.UnsafePickleError, minilm_loader.ChecksumError,
                io.WorkdirNotEmptyError, io.WorkdirNotWritableError,
                app.UsageError)
# Inside input_phase(): what checking flags, config and files raises.
_PHASE_ERRORS = (ValueError, OSError, KeyError)
_TRACEBACK = "Traceback (most recent call last)"


class InputError(ValueError):
  """A ValueError / OSError / KeyError of `input_phase`: the user's (a
  ValueError, so callers of a main that catch bad values still do)."""


@contextlib.contextmanager
def input_phase():
  """Marks the block that checks the user's input: its errors are theirs."""
  try:
    yield
  except INPUT_ERRORS:
    raise
  except _PHASE_ERRORS as e:
    # KeyError's str is the repr of the key: name the type too.
    text = f"missing key {e}" if isinstance(e, KeyError) else str(e)
    raise InputError(text) from e


def one_line(text: str) -> str:
  """`text` with its lines joined: an error is one line of a terminal."""
  return " ".join(part.strip() for part in str(text).splitlines()
                  if part.strip())


def flag_message(error: Exception) -> str:
  """The line of a flags error; ml_collections puts the config file's whole
  traceback into it, of which the flag and the last line are the news."""
  text = str(error)
  if _TRACEBACK not in text:
    return one_line(text)
  head = text.split(": ", 1)[0] if text.startswith("flag ") else ""
  last = [line for line in text.splitlines() if line.strip()][-1].strip()
  return f"{head}: {last}" if head else last


def _fail(message: str, status: int) -> NoReturn:
  print(f"{pathlib.Path(sys.argv[0]).stem}: error: {message}",
        file=sys.stderr)
  sys.exit(status)


def _parse(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(flag_message(e), 2)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections applies --config.a.b=v overrides while parsing and
    # raises these bare when a field does not exist or a value does not fit.
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    _fail(f"{type(e).__name__}: {one_line(e).strip(chr(34))} (applying "
          f"{' '.join(overrides) or 'the flags'})", 2)


def guarded(main: Callable) -> Callable:
  """`main` with the failure rules of the module docstring."""

  def wrapped(argv):
    try:
      return main(argv)
    except (InputError, *INPUT_ERRORS) as e:
      _fail(one_line(e), 2)
    except runner.NonFiniteError as e:
      _fail(one_line(e), 1)

  return wrapped


def run(main: Callable) -> None:
  """`app.run(main)` with one-line user errors (module docstring)."""
  app.run(guarded(main), flags_parser=_parse)
