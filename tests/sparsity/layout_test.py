"""The cache layout a plan implies: hand-computed cache lengths, write
offsets, layer segments and runs."""

from absl.testing import absltest

from tests.sparsity import small_plans
from toprovar_jax.models import config as config_lib
from toprovar_jax.sparsity import baselines
from toprovar_jax.sparsity import layout
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import validation


_CFG = small_plans.CFG
_2B = small_plans.INFINITY_2B
_scale = small_plans.scale
_paper_plan = small_plans.paper_plan


class LayoutTest(absltest.TestCase):
  """Hand-computed cache lengths, offsets, segments and runs.

  Layer columns (scales 0, 1, 2; N_s = 1, 4, 16; K_1 = 2, K_2 = 8):
    l0 F F F  l1 F F F  l2 F S S  l3 F S S  l4 F S X  l5 F F F
  written K/V:  l0 1+4+16 = 21, l2 1+2+8 = 11, l4 1+2+0 = 3.
  """

  def setUp(self):
    super().setUp()
    self.cfg = config_lib.replace(_CFG, depth=6)
    self.plan = plan_lib.SparsityPlan(
        name="h", schedule=((1, 1), (2, 2), (4, 4)), num_layers=6,
        exit_scale=None, scales=(
            _scale(1, "FFFFFF"),
            _scale(2, "FFSSSF", scorer="frequency"),
            _scale(8, "FFSSXF", probe_layer=1, scorer="entropy"),
        ))
    validation.validate_plan(self.plan, self.cfg)

  def test_kv_cache_lengths(self):
    self.assertEqual(layout.kv_cache_lengths(self.plan, self.cfg),
                     (21, 21, 11, 11, 3, 21))
    self.assertEqual(layout.kv_cache_lengths(plan_lib.dense_plan(_2B)),
                     (10521,) * 32)

  def test_kv_cache_lengths_fastvar(self):
    # 2B FastVAR: dense through 24x24 (1497), then 615 + 800 in S layers.
    lengths = layout.kv_cache_lengths(baselines.fastvar_plan(_2B), _2B)
    self.assertEqual(lengths, (4121,) * 3 + (1497 + 615 + 800,) * 25
                     + (4121,) * 4)

  def test_kv_write_offsets(self):
    self.assertEqual(layout.kv_write_offsets(self.plan), (
        (0, 0, 0, 0, 0, 0),
        (1, 1, 1, 1, 1, 1),
        (5, 5, 3, 3, 3, 5),
    ))

  def test_layer_segments(self):
    self.assertEqual(layout.layer_segments(self.plan),
                     ((0, 2), (2, 4), (4, 5), (5, 6)))
    self.assertEqual(layout.layer_segments(plan_lib.dense_plan(_2B)),
                     ((0, 32),))
    self.assertEqual(layout.layer_segments(_paper_plan()),
                     ((0, 3), (3, 31), (31, 32)))

  def test_runs_at_scale(self):
    self.assertEqual(layout.runs_at_scale(self.plan, 0),
                     ((0, 2, "F"), (2, 4, "F"), (4, 5, "F"), (5, 6, "F")))
    # Layers 2..4 are all S at scale 1 but split at the segment boundary 4.
    self.assertEqual(layout.runs_at_scale(self.plan, 1),
                     ((0, 2, "F"), (2, 4, "S"), (4, 5, "S"), (5, 6, "F")))
    self.assertEqual(
        layout.runs_at_scale(self.plan, 2, split_at_probe=True),
        ((0, 1, "F"), (1, 2, "F"), (2, 4, "S"), (4, 5, "X"), (5, 6, "F")))
    with self.assertRaisesWithLiteralMatch(
        plan_lib.PlanError,
        "plan 'h', scale 3, field 'scales': scale 3 is not generated (0..2)"):
      layout.runs_at_scale(self.plan, 3)


if __name__ == "__main__":
  absltest.main()
