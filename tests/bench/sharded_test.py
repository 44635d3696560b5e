"""The sharded-path benchmark (`bench.sharded`) on a 2-scale, 1-layer
Infinity-style model, fp32 CPU: both programs draw the same tokens, the
record names the mesh, both timings and the overhead between them."""

from absl.testing import absltest
import jax
import numpy as np

from toprovar_jax import sharding
from toprovar_jax import testing
from toprovar_jax.bench import latency
from toprovar_jax.bench import sharded
from toprovar_jax.models import config as config_lib
from toprovar_jax.models import transformer
from toprovar_jax.sampling import runner
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.sparsity import plan as plan_lib

_TOK = config_lib.BSQConfig(base_ch=32, ch_mult=(1,), num_res_blocks=0,
                            codebook_dim=4)


class MeshOverheadTest(absltest.TestCase):

  def test_same_tokens_and_both_timings(self):
    cfg = config_lib.replace(testing.micro_infinity(), depth=1,
                             schedule=config_lib.square_schedule((1, 2)))
    setup = latency.BenchSetup(variant="micro", batch=2, text_len=4,
                               text_tokens=3, dtype="float32", top_k=0,
                               top_p=0.0)
    params = transformer.init_params(cfg, jax.random.key(0))
    mesh = sharding.make_mesh(devices=jax.devices()[:2])
    row = sharded.mesh_overhead(
        cfg, _TOK, params, None, latency.conditioning(cfg, setup), setup,
        plan_lib.dense_plan(cfg), execution=sampler_lib.ExecutionConfig(),
        mesh=mesh, runs=2, options=runner.compiler_options())
    self.assertTrue(row["tokens_equal"])
    self.assertEqual(row["mesh"], {"data": 2})
    self.assertEqual(set(row["transformer_s"]), {"unsharded", "mesh"})
    self.assertLen(row["transformer_runs_s"]["mesh"], 2)
    t = row["transformer_s"]
    self.assertAlmostEqual(row["overhead"], t["mesh"] / t["unsharded"] - 1)
    self.assertTrue(np.isfinite(row["overhead"]))

  def test_batch_must_fill_the_data_axis(self):
    setup = latency.BenchSetup(variant="micro", batch=3)
    with self.assertRaisesRegex(ValueError, r"batch 3 is not a multiple of "
                                r"the mesh's data axis \{'data': 2\}"):
      sharded.mesh_overhead(None, None, None, None, None, setup, None,
                            execution=sampler_lib.ExecutionConfig(),
                            mesh=sharding.make_mesh(
                                devices=jax.devices()[:2]))


if __name__ == "__main__":
  absltest.main()
