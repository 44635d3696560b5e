"""The accumulated latent of the scale loop (Infinity's running code sum)
and the next scale's input."""

import math

from absl.testing import absltest
import jax.numpy as jnp
import numpy as np

from toprovar_jax import testing
from toprovar_jax.models import config as config_lib
from toprovar_jax.sampling import latents


class InfinityLatentsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.cfg = testing.micro_infinity()  # scales 1, 2, 4, 6; d = 4
    self.acc = latents.for_model(self.cfg, None)

  def test_sum_of_codes(self):
    self.assertIsInstance(self.acc, latents.InfinityLatents)
    summed = self.acc.init(2)
    self.assertEqual(summed.shape, (2, 6, 6, 4))
    # All-one bits at the 1x1 scale: +1/sqrt(d) everywhere after the resize.
    summed = self.acc.add(None, summed, jnp.ones((2, 1, 4), jnp.int32), 0)
    np.testing.assert_allclose(summed, 0.5, atol=1e-6)
    # At the last scale the codes are added as they are, no resize.
    bits = np.zeros((2, 36, 4), np.int32)
    bits[:, 0] = 1
    summed = self.acc.add(None, summed, jnp.asarray(bits), 3)
    np.testing.assert_allclose(summed[0, 0, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(summed[0, 5, 5], 0.0, atol=1e-6)

  def test_next_input_is_the_sum_at_the_next_grid(self):
    summed = jnp.full((1, 6, 6, 4), 0.25)
    x = self.acc.next_input(None, summed, 2)
    self.assertEqual(x.shape, (1, 16, 4))  # the 4x4 scale, flattened
    np.testing.assert_allclose(x, 0.25, atol=1e-6)

  def test_patchify_doubles_the_grid(self):
    eight = config_lib.get_variant("infinity_8b")
    acc = latents.for_model(eight, None)
    self.assertEqual(acc.code_dim, 14)
    self.assertEqual(acc.init(1).shape, (1, 128, 128, 14))
    # The 1x1 scale's 56 bits are 2x2 latent pixels of 14 codes.
    out = acc.add(None, jnp.zeros((1, 2, 2, 14)),
                  jnp.ones((1, 1, 56), jnp.int32), 0)
    self.assertEqual(out.shape, (1, 2, 2, 14))
    np.testing.assert_allclose(out, 1 / math.sqrt(14), atol=1e-6)


if __name__ == "__main__":
  absltest.main()
