"""Two processes with `jax.distributed` agree with one (SPEC §10, several
hosts): two CPU processes on localhost, two devices each, one `data` axis
over all four; the images of the sparse plan of `sharding_test` and a
cross-process `sharding.sum_rows` equal this process's unsharded run and
NumPy. Process 0 alone writes (`tests/distributed_worker.py`)."""

import os
import pathlib
import socket
import subprocess
import sys
import tempfile

from absl.testing import absltest
import numpy as np

from tests import sharding_test
from toprovar_jax.sampling import runner

_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


class TwoProcessesTest(absltest.TestCase):

  def test_two_processes_agree_with_one(self):
    cfg, params, vae, cond = sharding_test._setup()
    smp = sharding_test._sampler(cfg, sharding_test.sparse_plan(cfg))
    want = runner.generate_images(smp, params, vae, cond, batch_size=3,
                                  **sharding_test._KW)
    with tempfile.TemporaryDirectory() as tmp:
      out = pathlib.Path(tmp) / "out.npz"
      env = dict(os.environ, PYTHONPATH=str(_ROOT))
      port = str(_free_port())
      procs = [subprocess.Popen(
          [sys.executable, "-m", "tests.distributed_worker", port, str(i),
           str(out)], cwd=_ROOT, env=env, stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT, text=True) for i in range(2)]
      logs = []
      try:
        for p in procs:
          logs.append(p.communicate(timeout=240)[0])
      finally:
        for p in procs:
          if p.poll() is None:
            p.kill()
      for p, log in zip(procs, logs):
        self.assertEqual(p.returncode, 0, log[-3000:])
      got = np.load(out)
      # 4 devices in all, 2 processes of 2.
      np.testing.assert_array_equal(got["mesh"], [4, 2, 2])
      np.testing.assert_array_equal(got["images"], want.images)
      stats = np.arange(24, dtype=np.float32).reshape(8, 3) / 7
      np.testing.assert_array_equal(got["sums"],
                                    stats[:6].astype(np.float64).sum(0))


if __name__ == "__main__":
  absltest.main()
