"""Infinity's BSQ VAE converter: strict key errors, optional buffers, both
key spellings."""

from absl.testing import absltest
import chex
import numpy as np

from tests.models import bsq_vae_test as fixtures
from toprovar_jax.convert import bsq_vae as convert_lib
from toprovar_jax.convert import common
from toprovar_jax.models import config as config_lib
from toprovar_jax.weights import strict

_CFG = fixtures._CFG
_D = fixtures._D
_params = fixtures._params
_reference = fixtures._reference


class ConverterTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.sd = common.strip_prefix(_reference(), 'vae/')

  def test_strict_errors_name_every_bad_key(self):
    sd = dict(self.sd)
    removed = 'decoder.up.2.block.1.conv2.conv.weight'
    reshaped = 'encoder.mid.block_1.norm1.norm.bias'
    added = 'encoder.extra_layer.weight'
    del sd[removed]
    sd[reshaped] = np.zeros((7,), np.float32)
    sd[added] = np.zeros((3,), np.float32)
    with self.assertRaises(strict.ConversionError) as ctx:
      convert_lib.convert_bsq_vae(sd, _CFG)
    err = ctx.exception
    self.assertEqual(err.missing, [removed])
    self.assertEqual(err.unexpected, [added])
    self.assertEqual([k for k, _, _ in err.mismatched], [reshaped])
    for key in (removed, reshaped, added):
      self.assertIn(key, str(err))

  def test_mask_buffers_optional_but_shape_checked(self):
    sd = {k: v for k, v in self.sd.items() if not k.endswith('lfq.mask')}
    convert_lib.convert_bsq_vae(sd, _CFG)  # Absent: fine.
    sd['quantize.lfq.mask'] = np.arange(_D + 1)
    with self.assertRaisesRegex(strict.ConversionError, 'quantize.lfq.mask'):
      convert_lib.convert_bsq_vae(sd, _CFG)

  def test_unwrapped_spelling(self):
    # load_cnn also accepts `….conv1.weight` / `….norm1.weight`.
    bare = {k.replace('.conv.weight', '.weight').replace('.conv.bias', '.bias')
            .replace('.norm.weight', '.weight').replace('.norm.bias', '.bias'):
            v for k, v in self.sd.items()}
    self.assertNotEqual(set(bare), set(self.sd))
    chex.assert_trees_all_equal(convert_lib.convert_bsq_vae(bare, _CFG),
                                _params()['params'])

  def test_wrong_config_is_rejected(self):
    with self.assertRaises(strict.ConversionError):
      convert_lib.convert_bsq_vae(
          self.sd, config_lib.replace(_CFG, codebook_dim=32))


if __name__ == "__main__":
  absltest.main()
