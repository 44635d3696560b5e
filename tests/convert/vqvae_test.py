"""VAR's VQVAE converter: the converted tree, strict key errors."""

from absl.testing import absltest
import numpy as np

from tests.models import vqvae_test as fixtures
from toprovar_jax.convert import vqvae as convert_lib
from toprovar_jax.weights import strict

_CFG = fixtures._CFG
_TINY_PARAMS = fixtures._TINY_PARAMS
_state_dict = fixtures._state_dict


class ConverterTest(absltest.TestCase):

  def test_converted_tree_matches_module(self):
    variables = convert_lib.convert_vqvae(_state_dict(), _CFG, verify=False)
    strict.check_against(variables, convert_lib.abstract_variables(_CFG))
    self.assertEqual(convert_lib.count_params(variables), _TINY_PARAMS)

  def test_rejects_missing_unexpected_and_misshaped_keys(self):
    sd = dict(_state_dict())
    del sd['decoder.up.3.block.0.nin_shortcut.bias']
    sd['encoder.down.4.attn.2.qkv.weight'] = np.zeros((384, 128, 1, 1))
    sd['quantize.embedding.weight'] = np.zeros((255, 32), np.float32)
    with self.assertRaises(strict.ConversionError) as ctx:
      convert_lib.convert_vqvae(sd, _CFG)
    msg = str(ctx.exception)
    self.assertIn('decoder.up.3.block.0.nin_shortcut.bias', msg)
    self.assertIn('encoder.down.4.attn.2.qkv.weight', msg)
    self.assertIn('quantize.embedding.weight', msg)
    self.assertEqual(ctx.exception.missing,
                     ['decoder.up.3.block.0.nin_shortcut.bias'])
    self.assertEqual(ctx.exception.unexpected,
                     ['encoder.down.4.attn.2.qkv.weight'])
    self.assertEqual([m[0] for m in ctx.exception.mismatched],
                     ['quantize.embedding.weight'])

  def test_ignores_only_the_ema_buffer(self):
    sd = dict(_state_dict())
    del sd['quantize.ema_vocab_hit_SV']  # optional: never required
    convert_lib.convert_vqvae(sd, _CFG, verify=False)


if __name__ == "__main__":
  absltest.main()
