"""The mains that share flags live together in one process.

absl keeps one flag registry per process: two mains that each defined
`--config` made every process importing both (a pytest worker, a notebook)
fail at import with DuplicateFlagError. `experiments/run_flags.py` defines
the shared flags once; these tests import every main that uses it (and the
other mains the suite runs in-process) into one fresh interpreter, and check
that a shared flag a main does not read is refused, not ignored.
"""

import os
import subprocess
import sys

from absl import app
from absl import flags
from absl.testing import absltest
from absl.testing import flagsaver

from experiments import run_flags

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# Every main that imports run_flags, and the other mains tests run in-process.
_MAINS = ("generate", "evaluate", "calibrate", "calibrate_adaptive",
          "train_skipvar", "convert_checkpoint", "make_manifests",
          "ship_weights")


class RunFlagsTest(absltest.TestCase):

  def test_mains_import_together(self):
    code = ("import importlib\n"
            f"for m in {_MAINS!r}:\n"
            "  importlib.import_module('experiments.' + m)\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=_ROOT,
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    self.assertEqual(out.stdout.strip(), "ok")

  def test_every_user_of_run_flags_is_listed(self):
    users = set()
    for name in os.listdir(os.path.join(_ROOT, "experiments")):
      if name.endswith(".py") and name != "run_flags.py":
        with open(os.path.join(_ROOT, "experiments", name),
                  encoding="utf-8") as f:
          if "import run_flags" in f.read():
            users.add(name[:-3])
    self.assertEqual(users - set(_MAINS), set())
    self.assertIn("generate", users)

  def test_unread_shared_flag_is_refused(self):
    with flagsaver.flagsaver():
      flags.FLAGS(["generate", "--batch_size=8"])
      with self.assertRaisesRegex(app.UsageError,
                                  r"^--batch_size is not a flag of generate$"):
        run_flags.refuse_unused("generate", "config", "workdir", "overwrite")
      # A flag the main reads passes.
      run_flags.refuse_unused("evaluate", "batch_size")

  def test_negative_batch_size_is_refused(self):
    with flagsaver.flagsaver():
      with self.assertRaisesRegex(flags.IllegalFlagValueError, "batch_size"):
        flags.FLAGS(["evaluate", "--batch_size=-1"])


if __name__ == "__main__":
  absltest.main()
