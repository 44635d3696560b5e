"""The transformer converter (VAR and Infinity keys): strict errors, block
key spellings."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from toprovar_jax import testing
from toprovar_jax.convert import common
from toprovar_jax.convert import transformer as convert_transformer
from toprovar_jax.models import config as config_lib
from toprovar_jax.weights import strict


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


if __name__ == "__main__":
  absltest.main()
