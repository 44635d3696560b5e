"""Tests for toprovar_jax.training.budget (experiments/budget.py)."""

import pathlib
import tempfile

from absl.testing import absltest

from toprovar_jax.training import budget
from toprovar_jax.training import loop


def fake_result(start, end, rate):
  """A loop.RunResult with only the fields results.json keeps."""
  return loop.RunResult(state=None, start_step=start, end_step=end,
                        stopped_by="time_budget", steps_per_sec=rate,
                        compile_s=1.0, wall_s=2.0, eval_metrics={},
                        export_files=())


class PlannedStepsTest(absltest.TestCase):

  def test_fills_the_time_left(self):
    # 355 probe steps at 7.5 steps/s, 300 s left: 2,250 more.
    self.assertEqual(budget.planned_steps(355, 7.5, 300.0), 2605)

  def test_at_least_one_more_step(self):
    # No rate measured, or no time left: the resumed run still exports.
    self.assertEqual(budget.planned_steps(29, 0.0, 300.0), 30)
    self.assertEqual(budget.planned_steps(29, 9.0, -12.0), 30)

  def test_cap(self):
    self.assertEqual(budget.planned_steps(1000, 40.0, 100.0, cap=3000),
                     3000)
    self.assertEqual(budget.planned_steps(1000, 40.0, 10.0, cap=3000),
                     1400)


class LastRunTest(absltest.TestCase):

  def test_reads_the_last_run_of_results_json(self):
    # The file as experiments/train.py writes it (loop.append_results).
    workdir = pathlib.Path(tempfile.mkdtemp())
    loop.append_results(workdir, fake_result(0, 355, 7.5771),
                        stage="transformer")
    self.assertEqual(budget.last_run(workdir), (355, 7.5771))
    loop.append_results(workdir, fake_result(355, 2335, 7.5688),
                        stage="transformer")
    self.assertEqual(budget.last_run(workdir), (2335, 7.5688))


class StoredTrainStepsTest(absltest.TestCase):

  def test_reads_the_run_config(self):
    workdir = pathlib.Path(tempfile.mkdtemp())
    loop.check_resume_config(workdir, {"train_steps": 5123, "loop": {}})
    self.assertEqual(budget.stored_train_steps(workdir), 5123)

  def test_missing_run_is_named(self):
    workdir = pathlib.Path(tempfile.mkdtemp()) / "tf"
    with self.assertRaisesRegex(FileNotFoundError,
                                "tf/config.json: no training run"):
      budget.stored_train_steps(workdir)


if __name__ == "__main__":
  absltest.main()
