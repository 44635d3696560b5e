"""ScaleState: the scale loop's carry, and the SkipVAR branch drop."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax.models import transformer
from toprovar_jax.sampling import state as state_lib

_B, _N, _C, _L, _M, _H, _D, _T = 2, 4, 8, 3, 5, 2, 4, 6


def _rows(*shape, axis=0):
  """An array whose value at row r (on `axis`) is r: row identity survives."""
  r = jnp.arange(2 * _B, dtype=jnp.float32)
  r = r.reshape((1,) * axis + (-1,) + (1,) * (len(shape) - axis))
  return jnp.broadcast_to(r, shape[:axis] + (2 * _B,) + shape[axis:])


def _state():
  cond = transformer.Conditioning(
      cond=_rows(_C), ada_in=_rows(6, _C), x0=_rows(1, _C),
      text=_rows(_T, _C), text_mask=_rows(_T) > -1)
  kv = (_rows(_L, _M, _H, _D, axis=1),) * 2
  return state_lib.ScaleState(
      x=_rows(_N, _C), latent=jnp.zeros((_B, 2, 2, 3)),
      caches=(kv, kv), cond=cond,
      text_kv=(_rows(_L, _T, _H, _D, axis=1),) * 2,
      text_lengths=jnp.arange(2 * _B), layer_params=None,
      layer_text_kv=[(_rows(_T, _H, _D),) * 2 for _ in range(_L)],
      prev_entropy=_rows(_N), branch_store={1: {0: (_rows(_N, _C),)}},
      tokens=(), logits=(), entropy=(), scale=2, batch=_B, guided=True,
      prev_hw=(2, 2))


class ScaleStateTest(absltest.TestCase):

  def test_drop_uncond_keeps_the_conditional_rows_everywhere(self):
    st = _state()
    self.assertEqual(st.rows, 2 * _B)
    half = st.drop_uncond()
    self.assertFalse(half.guided)
    self.assertEqual(half.rows, _B)
    leaves = {jax.tree_util.keystr(k): v for k, v in
              jax.tree_util.tree_leaves_with_path(half)}
    for name, leaf in leaves.items():
      if name.startswith(".latent"):
        continue  # (B, ...) from the start
      # Rows 0..B-1 survive, whatever axis the rows are on.
      axis = 1 if name.startswith((".caches", ".text_kv")) else 0
      self.assertEqual(leaf.shape[axis], _B, name)
      got = np.unique(np.moveaxis(np.asarray(leaf, np.float32), axis, 0)
                      .reshape(_B, -1), axis=1)
      if name != ".cond.text_mask":
        np.testing.assert_array_equal(got, np.arange(_B)[:, None], name)
    # Static fields stay; an unguided state is returned as it is.
    self.assertEqual((half.scale, half.batch, half.prev_hw), (2, _B, (2, 2)))
    self.assertIs(half.drop_uncond(), half)

  def test_is_a_pytree_with_static_fields(self):
    st = _state()
    doubled = jax.tree.map(lambda t: t * 2, st)
    self.assertEqual((doubled.scale, doubled.guided), (2, True))
    np.testing.assert_array_equal(doubled.x, st.x * 2)
    # Static fields are part of the tree's structure (jit re-traces on them).
    self.assertNotEqual(jax.tree.structure(st),
                        jax.tree.structure(st.replace(scale=3)))


if __name__ == "__main__":
  absltest.main()
