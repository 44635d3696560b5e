"""Transformer: golden parameter counts, converter strictness, RoPE layout."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from toprovar_jax.models import config as config_lib
from toprovar_jax.models import transformer

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


if __name__ == "__main__":
  absltest.main()
