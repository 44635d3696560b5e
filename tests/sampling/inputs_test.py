"""`sampling/inputs`: the host-side checks of per-row keys and text masks."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax.sampling import inputs


class InputsTest(absltest.TestCase):

  def test_text_mask_must_be_a_prefix(self):
    inputs.check_text_mask(np.array([[True, True, False], [True] * 3]))
    with self.assertRaisesRegex(ValueError, "text_mask row 1 is not a prefix"):
      inputs.check_text_mask(np.array([[True, False, False],
                                       [True, False, True]]))
    with self.assertRaisesRegex(ValueError, "text_mask must be a .B, T. bool"):
      inputs.check_text_mask(np.ones((2, 3), np.int32))
    with self.assertRaisesRegex(ValueError, "text_mask must be a .B, T. bool"):
      inputs.check_text_mask(np.ones((3,), bool))

  def test_row_keys_are_one_typed_key_per_row(self):
    keys = jax.random.split(jax.random.key(0), 3)
    inputs.check_row_keys(keys, 3)
    with self.assertRaisesRegex(ValueError, r"rng must be \(4,\) typed PRNG "
                                r"keys .* got key<fry> \(3,\)"):
      inputs.check_row_keys(keys, 4)
    # Raw uint32 keys (jax.random.PRNGKey) are refused: rows would share
    # streams silently if a (2,) uint32 array passed as two keys.
    with self.assertRaisesRegex(ValueError, r"got uint32 \(2,\)"):
      inputs.check_row_keys(jax.random.PRNGKey(0), 2)
    # Works on tracers (shapes and dtypes are static).
    jax.jit(lambda k: inputs.check_row_keys(k, 3) or jnp.zeros(()))(keys)


if __name__ == "__main__":
  absltest.main()
