"""Transformer: golden parameter counts, converter strictness, RoPE layout."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from toprovar_jax.convert import common
from toprovar_jax.convert import transformer as convert_transformer
from toprovar_jax.models import config as config_lib
from toprovar_jax.models import layers
from toprovar_jax.models import transformer
from toprovar_jax import testing
from toprovar_jax.weights import strict

# Measured from the official modules (ARCHITECTURES A.1 / B.1; reference
# json `derived.n_params_*` for the tiny ones).
_GOLDEN_PARAMS = {
    "var_d16": 310_283_520,
    "var_d20": 600_917_136,
    "var_d24": 1_033_399_360,
    "var_d30": 2_010_020_356,
    "var_d36": 2_353_893_904,
    "infinity_2b": 2_204_564_032,
    "infinity_8b": 8_375_791_824,
    # Our own design (SPEC §8), pinned so its shipped size stays in budget.
    "emoji": 9_410_496,
    "var_tiny": 880_260,
    "infinity_tiny": 3_110_180,
    # Test-only miniature (the training and evaluation tests').
    "_emoji_tiny": 225_172,
}


class ParamCountTest(parameterized.TestCase):

  def test_every_variant_has_a_golden_count(self):
    self.assertEqual(set(config_lib.VARIANTS), set(_GOLDEN_PARAMS))

  @parameterized.named_parameters(*[(n, n) for n in sorted(_GOLDEN_PARAMS)])
  def test_param_count(self, name):
    self.assertEqual(transformer.param_count(config_lib.get_variant(name)),
                     _GOLDEN_PARAMS[name])


class EmojiBudgetTest(absltest.TestCase):

  def test_shipped_weights_fit_30_mb_in_bf16(self):
    import jax  # pylint: disable=g-import-not-at-top
    from toprovar_jax.convert import bsq_vae as convert_bsq  # pylint: disable=g-import-not-at-top
    tok = convert_bsq.abstract_params(config_lib.get_tokenizer("emoji"))
    n = (transformer.param_count(config_lib.get_variant("emoji"))
         + sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tok)))
    self.assertLessEqual(2 * n, 30 * 2**20)

  def test_emoji_schedule(self):
    cfg = config_lib.get_variant("emoji")
    self.assertGreaterEqual(cfg.num_scales, 10)
    self.assertEqual(cfg.schedule[-1], (16, 16))
    tok = config_lib.get_tokenizer("emoji")
    self.assertEqual(16 * tok.stride, 128)  # 128 px images


class ConverterTest(parameterized.TestCase):

  @parameterized.named_parameters(("var", "var_tiny", "var/"),
                                  ("infinity", "infinity_tiny", "infinity/"))
  def test_strict_errors_list_every_bad_key(self, name, prefix):
    sd = common.strip_prefix(testing.load_reference(name), prefix)
    cfg = config_lib.get_variant(name)
    dropped = "head.bias"
    sd.pop(dropped)
    sd["bogus.weight"] = np.zeros((3,), np.float32)
    bad = "word_embed.weight"
    sd[bad] = np.zeros((5, 5), np.float32)
    with self.assertRaises(strict.ConversionError) as ctx:
      convert_transformer.convert_transformer(sd, cfg)
    msg = str(ctx.exception)
    self.assertIn(dropped, msg)
    self.assertIn("bogus.weight", msg)
    self.assertIn(bad, msg)
    self.assertEqual(ctx.exception.missing, [dropped])
    self.assertEqual(ctx.exception.unexpected, ["bogus.weight"])
    self.assertEqual([m[0] for m in ctx.exception.mismatched], [bad])

  def test_wrong_depth_is_rejected(self):
    sd = common.strip_prefix(testing.load_reference("var_tiny"), "var/")
    cfg = config_lib.replace(config_lib.get_variant("var_tiny"), depth=3,
                             num_heads=2)
    with self.assertRaisesRegex(strict.ConversionError, "blocks.2.attn"):
      convert_transformer.convert_transformer(sd, cfg)

  def test_infinity_chunked_and_flat_block_keys_agree(self):
    # The 2B file stores `block_chunks.{c}.module.{j}` (8 chunks x 4 blocks);
    # flat `blocks.{i}` names must map to the same global layers.
    sd = common.strip_prefix(testing.load_reference("infinity_tiny"),
                             "infinity/")
    cfg = config_lib.get_variant("infinity_tiny")
    chunked = convert_transformer.convert_transformer(sd, cfg)
    flat = {k.replace("block_chunks.", "blocks.").replace(".module.0.", "."): v
            for k, v in sd.items()}
    flat_params = convert_transformer.convert_transformer(flat, cfg)
    for a, b in zip(np.asarray(chunked["blocks"]["sa"]["q_bias"]),
                    np.asarray(flat_params["blocks"]["sa"]["q_bias"])):
      np.testing.assert_array_equal(a, b)


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
