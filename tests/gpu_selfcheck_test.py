"""GPU self-check: the tolerance rule, and the CLI refuses a host without a
GPU (the checks themselves need one; `--norequire_gpu` runs the interpret
parts, ~10 min on 2 busy CPUs, so not here)."""

import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest
import numpy as np

from toprovar_jax import gpu_selfcheck


class ToleranceTest(absltest.TestCase):

  def test_a_route_may_be_twice_as_noisy_as_xla_bf16(self):
    ref = np.zeros(4)
    xla_bf16 = np.array([0.0, 0.01, 0.0, 0.0])
    ok, bad = gpu_selfcheck._noise_checks(
        "x", ref, xla_bf16, {"good": np.array([0.02, 0, 0, 0]),
                             "bad": np.array([0, 0, 0.0201, 0])})
    self.assertEqual(ok["name"], "x/good")
    self.assertAlmostEqual(ok["bf16_xla_noise"], 0.01)
    self.assertAlmostEqual(ok["tolerance"], 0.02 + gpu_selfcheck.ABS_FLOOR)
    self.assertTrue(ok["passed"])
    self.assertFalse(bad["passed"])

  def test_nan_fails(self):
    c = gpu_selfcheck._check("n", float("nan"), 1.0)
    self.assertFalse(c["passed"])
    json.dumps(c)


class CliTest(absltest.TestCase):

  def test_refuses_without_a_gpu(self):
    out = tempfile.mkdtemp()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "experiments.gpu_selfcheck",
                        f"--out={out}"], capture_output=True, text=True,
                       env=env, check=False, timeout=120)
    self.assertEqual(r.returncode, 2, r.stderr)
    self.assertIn("no GPU (JAX backend 'cpu')", r.stderr + r.stdout)
    self.assertEqual(os.listdir(out), [])


if __name__ == "__main__":
  absltest.main()
