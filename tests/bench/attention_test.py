"""Tests for toprovar_jax.bench.attention (the FAE timing harness)."""

from absl.testing import absltest
import jax.numpy as jnp

from toprovar_jax.bench import attention as attention_bench
from toprovar_jax.models import config as config_lib


class ProbeShapesTest(absltest.TestCase):

  def test_infinity_2b_last_scale_is_the_anchor_shape(self):
    # ANCHORS.md: B=2, 4096 queries, 10,521 keys, 16 heads x 128.
    cfg = config_lib.get_variant("infinity_2b")
    (shape,) = attention_bench.probe_shapes(cfg, [12])
    self.assertEqual(shape, attention_bench.Shape(2, 4096, 10521, 16, 128))
    self.assertEqual(shape.flops, 4.0 * 2 * 16 * 4096 * 10521 * 128)

  def test_keys_are_the_prefix_plus_the_scale(self):
    cfg = config_lib.get_variant("infinity_tiny")
    shapes = attention_bench.probe_shapes(cfg, [0, 1, 2], batch=4)
    off = cfg.scale_offsets
    self.assertEqual([(s.batch, s.queries, s.keys) for s in shapes],
                     [(4, off[i + 1] - off[i], off[i + 1]) for i in range(3)])


class TimeAttentionTest(absltest.TestCase):

  def test_rows_and_a_failing_route_reported_in_place(self):
    cfg = config_lib.get_variant("infinity_tiny")
    shapes = attention_bench.probe_shapes(cfg, [2])
    # 24 is not a power of two: the Pallas route fails, the others time.
    (row,) = attention_bench.time_attention(
        shapes, impl="xla", dtype=jnp.float32, runs=2,
        pallas_blocks=((24, 24),))
    self.assertGreater(row["plain_s"], 0.0)
    self.assertGreater(row["entropy_s"], 0.0)
    self.assertAlmostEqual(row["entropy_overhead"],
                           row["entropy_s"] / row["plain_s"] - 1.0)
    self.assertIn("pallas_24x24_error", row)
    self.assertNotIn("pallas_24x24_s", row)
    self.assertEqual((row["queries"], row["keys"]), (shapes[0].queries,
                                                     shapes[0].keys))


if __name__ == "__main__":
  absltest.main()
