"""One process of the two-process `jax.distributed` test on localhost.

  python -m tests.distributed_worker PORT PROCESS_ID OUT.npz

Two CPU devices per process, four in all; the mesh is the default one
`data` axis over every device of both processes, as on several hosts
(README "Several hosts"). Both processes generate the sparse plan's images
of `sharding_test` and reduce per-row statistics across the processes;
process 0 alone writes what it got. Run by `sharding_distributed_test`.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402  (after the flags above)
import numpy as np  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_threefry_partitionable", True)

from tests import sharding_test  # noqa: E402
from toprovar_jax import sharding  # noqa: E402
from toprovar_jax.sampling import runner  # noqa: E402


def main(port: str, process_id: str, out: str) -> None:
  sharding.initialize(f"localhost:{port}", 2, int(process_id),
                      timeout_s=120)
  cfg, params, vae, cond = sharding_test._setup()  # pylint: disable=protected-access
  smp = sharding_test._sampler(cfg, sharding_test.sparse_plan(cfg))  # pylint: disable=protected-access
  mesh = sharding.make_mesh()
  output = runner.generate_images(smp, params, vae, cond, batch_size=3,
                                  mesh=mesh, **sharding_test._KW)  # pylint: disable=protected-access
  stats = np.arange(24, dtype=np.float32).reshape(8, 3) / 7
  sums = sharding.sum_rows(sharding.put_rows(stats, mesh), num_rows=6)
  if jax.process_index() == 0:
    np.savez(out, images=output.images, sums=sums,
             mesh=np.asarray([mesh.size, jax.process_count(),
                              len(jax.local_devices())]))
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(*sys.argv[1:])
