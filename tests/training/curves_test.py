"""Training metrics on disk and their curves."""

import json
import os
import tempfile

from absl.testing import absltest

from toprovar_jax.training import curves


class MetricsFileTest(absltest.TestCase):

  def test_append_read_truncate(self):
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, "metrics.jsonl")
      self.assertEqual(curves.read_metrics(path), [])
      for step in (1, 2, 3):
        curves.append_metrics(path, dict(step=step, loss=1.0 / step))
      curves.append_metrics(path, dict(step=4, loss=float("nan")))
      with open(path, "a") as f:
        f.write('{"step": 5, "lo')  # a run killed mid-line
      rows = curves.read_metrics(path)
      self.assertEqual([r["step"] for r in rows], [1, 2, 3, 4])
      self.assertIsNone(rows[3]["loss"])  # non-finite -> null
      curves.truncate_metrics(path, 2)
      self.assertEqual([r["step"] for r in curves.read_metrics(path)], [1, 2])
      self.assertEqual(sorted(os.listdir(d)), ["metrics.jsonl"])

  def test_collect_curves(self):
    rows = [dict(step=1, loss=2.0, lr=0.1, flag=True),
            dict(step=2, loss=1.0, psnr=None),
            dict(step=2, loss=0.5)]  # a resumed run repeats step 2
    got = curves.collect_curves(rows)
    self.assertEqual(got, {"loss": dict(steps=[1, 2], values=[2.0, 0.5]),
                           "lr": dict(steps=[1], values=[0.1])})
    json.dumps(got)  # JSON-ready


if __name__ == "__main__":
  absltest.main()
