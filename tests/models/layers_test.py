"""Layers: 2-D RoPE positions, tables and rotation."""

from absl.testing import absltest
import numpy as np

from toprovar_jax import testing
from toprovar_jax.models import config as config_lib
from toprovar_jax.models import layers


class RopeTest(absltest.TestCase):

  def test_positions_match_official_table(self):
    ref = testing.load_reference("infinity_tiny")
    pos = layers.rope_positions(config_lib.get_variant("infinity_tiny"))
    np.testing.assert_array_equal(pos, ref["rope/grid_pos"])

  def test_interleaved_pairs_rows_then_cols(self):
    # Pair j < D/4 turns by row·θ_j, pair D/4 + j by col·θ_j (θ_0 = 1).
    cos, sin = layers.rope_tables(np.array([[3, 5]]), head_dim=8)
    self.assertEqual(cos.shape, (1, 4))
    np.testing.assert_allclose(cos[0], np.cos([3.0, 3.0 * 0.01, 5.0, 5.0 * 0.01]),
                               atol=1e-6)
    np.testing.assert_allclose(sin[0], np.sin([3.0, 3.0 * 0.01, 5.0, 5.0 * 0.01]),
                               atol=1e-6)
    x = np.arange(8, dtype=np.float32).reshape(1, 1, 1, 8)
    y = np.asarray(layers.apply_rope(x, cos, sin))
    # First pair (0, 1) rotated by 3 rad.
    np.testing.assert_allclose(
        y[0, 0, 0, :2], [0 * np.cos(3) - 1 * np.sin(3),
                         0 * np.sin(3) + 1 * np.cos(3)], atol=1e-6)

  def test_rope_grid_templates(self):
    self.assertEqual(config_lib.infinity_rope_grid(
        config_lib.square_schedule(config_lib.INFINITY_1M_SIDES[:7])), (64, 64))
    with self.assertRaisesRegex(ValueError, "schedule"):
      config_lib.infinity_rope_grid(((1, 1), (3, 3)))


if __name__ == "__main__":
  absltest.main()
