"""`experiments/launch`: a user's mistake is one line and exit 2; a bug keeps
its traceback (SPEC §11)."""

import contextlib
import io as io_lib
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest

from experiments import launch
from toprovar_jax.sampling import runner
from toprovar_jax.sparsity import plan as plan_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _call(fn):
  """(exit status or None, stderr) of launch.guarded(fn)(["prog"])."""
  err = io_lib.StringIO()
  with contextlib.redirect_stderr(err):
    try:
      launch.guarded(fn)(["prog"])
    except SystemExit as e:
      return e.code, err.getvalue()
  return None, err.getvalue()


class GuardedTest(absltest.TestCase):

  def test_input_errors_are_one_line_and_exit_2(self):
    def bad_plan(_):
      raise plan_lib.PlanError("no named plan 'x'\n(see the README)",
                               field="plan")
    code, err = _call(bad_plan)
    self.assertEqual(code, 2)
    self.assertRegex(err, r"^\S+: error: field 'plan': no named plan 'x' "
                     r"\(see the README\)\n$")

  def test_phase_errors_are_the_users(self):
    def phase(exc):
      def main(_):
        with launch.input_phase():
          raise exc
      return main
    for exc, text in [(ValueError("prompts_file: empty"),
                       "prompts_file: empty"),
                      (FileNotFoundError(2, "No such file", "/x/p.txt"),
                       "[Errno 2] No such file: '/x/p.txt'"),
                      (KeyError("t5_dir"), "missing key 't5_dir'")]:
      with self.subTest(type(exc).__name__):
        code, err = _call(phase(exc))
        self.assertEqual(code, 2)
        self.assertTrue(err.rstrip("\n").endswith(f"error: {text}"), err)
        self.assertEqual(err.count("\n"), 1)

  def test_internal_errors_keep_their_traceback(self):
    def outside_phase(_):
      raise ValueError("shape mismatch in a kernel")  # after the checks
    with self.assertRaisesRegex(ValueError, "shape mismatch"):
      launch.guarded(outside_phase)(["prog"])

    def bug_in_phase(_):
      with launch.input_phase():
        raise RuntimeError("bug")  # not an input error type
    with self.assertRaisesRegex(RuntimeError, "bug"):
      launch.guarded(bug_in_phase)(["prog"])

  def test_non_finite_is_one_line_and_exit_1(self):
    def nan(_):
      raise runner.NonFiniteError("non-finite logits at scale 3 (layer 2)")
    code, err = _call(nan)
    self.assertEqual(code, 1)
    self.assertTrue(err.endswith(
        "error: non-finite logits at scale 3 (layer 2)\n"), err)

  def test_flag_message_keeps_the_flag_and_the_cause(self):
    text = ("flag --config=configs/emoji.py:samples=0: Error whilst parsing "
            "config file:\n\nTraceback (most recent call last):\n  File "
            "\"configs/emoji.py\", line 50, in get_config\n    raise\n"
            "ValueError: config arg 'samples': must be >= 1, got 0\n")
    self.assertEqual(launch.flag_message(ValueError(text)),
                     "flag --config=configs/emoji.py:samples=0: ValueError: "
                     "config arg 'samples': must be >= 1, got 0")
    self.assertEqual(launch.flag_message(ValueError("flag --x=1: bad\nvalue")),
                     "flag --x=1: bad value")


class MainTest(absltest.TestCase):
  """The real command line: what a user sees."""

  def _generate(self, *args):
    return subprocess.run(
        [sys.executable, "-m", "experiments.generate", *args], cwd=_ROOT,
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))

  def test_bad_config_argument(self):
    with tempfile.TemporaryDirectory() as d:
      out = self._generate("--config=configs/emoji.py:samples=0",
                           f"--workdir={d}/run")
      self.assertEqual(out.returncode, 2, out.stderr[-2000:])
      self.assertEqual(out.stderr.strip().splitlines(), [
          "generate: error: flag --config=configs/emoji.py:samples=0: "
          "ValueError: config arg 'samples': must be >= 1, got 0"])
      self.assertFalse(os.path.exists(f"{d}/run"))

  def test_bad_compare_entry(self):
    with tempfile.TemporaryDirectory() as d:
      out = self._generate("--config=configs/emoji.py:compare=nope",
                           f"--workdir={d}/run")
      self.assertEqual(out.returncode, 2, out.stderr[-2000:])
      self.assertNotIn("Traceback", out.stderr)
      self.assertRegex(out.stderr.strip().splitlines()[-1],
                       r"^generate: error: config.sparsity.compare\[0\] = "
                       r"'nope': field 'plan': no named plan 'nope'")
      self.assertFalse(os.path.exists(f"{d}/run"))

  def test_unknown_config_field(self):
    with tempfile.TemporaryDirectory() as d:
      out = self._generate("--config=configs/tiny.py",
                           "--config.sparsity.nope=1", f"--workdir={d}/run")
      self.assertEqual(out.returncode, 2, out.stderr[-2000:])
      self.assertEqual(out.stderr.strip().splitlines(), [
          "generate: error: AttributeError: 'nope' (applying "
          "--config.sparsity.nope=1)"])


if __name__ == "__main__":
  absltest.main()
