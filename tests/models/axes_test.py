"""Logical axis names -> mesh axes (`models.axes`), on 4 fake CPU devices.

Names map through the rules to the axes the mesh has (others replicate);
`constrain` is the identity without a rules context and places the array
under one; `HeadsDense` is `nn.Dense(P·H·D, use_bias=False)` (same
parameter, same numbers); `param_axes` splits heads and FFN, keeps the
fused qkv kernel and the stem whole.
"""

from absl.testing import absltest
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np

from toprovar_jax import testing
from toprovar_jax.models import axes
from toprovar_jax.models import transformer


def _mesh(shape, names):
  # Auto axes, as toprovar_jax.sharding.make_mesh makes them (jax 0.10's
  # make_mesh defaults to Explicit axes).
  return jax.make_mesh(shape, names, devices=jax.devices()[:int(
      np.prod(shape))], axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


class SpecTest(absltest.TestCase):

  def test_names_map_to_the_axes_the_mesh_has(self):
    names = (axes.BATCH, None, axes.HEADS, None)
    self.assertEqual(axes.spec(names, axes.DEFAULT_RULES, ("data", "model")),
                     P("data", None, "model", None))
    self.assertEqual(axes.spec(names, axes.DEFAULT_RULES, ("data",)),
                     P("data", None, None, None))
    self.assertEqual(axes.spec((axes.EMBED, axes.MLP), axes.DEFAULT_RULES,
                               ("model",)), P(None, "model"))

  def test_a_name_without_a_rule_is_named(self):
    with self.assertRaisesRegex(ValueError, "logical axis 'vocab' has no "
                                "rule"):
      axes.spec(("vocab",), axes.DEFAULT_RULES, ("data",))


class ConstrainTest(absltest.TestCase):

  def test_identity_without_rules_and_placed_with_them(self):
    x = jnp.arange(32.0).reshape(4, 8)
    names = (axes.BATCH, axes.MLP)
    self.assertIs(axes.constrain(x, names), x)
    self.assertIsNone(axes.active_mesh())
    mesh = _mesh((2, 2), ("data", "model"))

    def fn(x):
      with axes.axis_rules(mesh):
        self.assertIs(axes.active_mesh(), mesh)
        return axes.constrain(x * 2, names)

    y = jax.jit(fn)(x)
    self.assertIsNone(axes.active_mesh())
    self.assertEqual(y.sharding.spec, P("data", "model"))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x) * 2)

  def test_wrong_number_of_names(self):
    mesh = _mesh((4,), ("data",))
    with axes.axis_rules(mesh):
      with self.assertRaisesRegex(ValueError, r"1 axis names \('batch',\) "
                                  r"for an array of shape \(4, 8\)"):
        axes.constrain(jnp.zeros((4, 8)), (axes.BATCH,))


class HeadsDenseTest(absltest.TestCase):

  def test_same_parameter_and_numbers_as_dense(self):
    x = jax.random.normal(jax.random.key(1), (2, 5, 16))
    dense = nn.Dense(3 * 4 * 8, use_bias=False)
    heads = axes.HeadsDense(3, 4, 8)
    pd = dense.init(jax.random.key(0), x)
    ph = heads.init(jax.random.key(0), x)
    np.testing.assert_array_equal(pd["params"]["kernel"],
                                  ph["params"]["kernel"])
    want = dense.apply(pd, x).reshape(2, 5, 3, 4, 8)
    np.testing.assert_allclose(heads.apply(ph, x), want, rtol=1e-6,
                               atol=1e-6)


class ParamAxesTest(absltest.TestCase):

  def test_heads_and_ffn_split_the_rest_whole(self):
    cfg = testing.micro_infinity()
    shapes = jax.eval_shape(lambda k: transformer.init_params(cfg, k),
                            jax.random.key(0))
    got = axes.param_axes(shapes)
    b = got["blocks"]
    self.assertEqual(b["ffn"]["fc1"]["kernel"],
                     (axes.LAYERS, axes.EMBED, axes.MLP))
    self.assertEqual(b["ffn"]["fc2"]["kernel"],
                     (axes.LAYERS, axes.MLP, axes.EMBED))
    self.assertEqual(b["sa"]["proj"]["kernel"],
                     (axes.LAYERS, axes.HEADS, axes.EMBED))
    self.assertEqual(b["sa"]["scale_mul"], (axes.LAYERS, axes.HEADS))
    self.assertEqual(b["ca"]["mat_q"]["kernel"],
                     (axes.LAYERS, axes.EMBED, axes.HEADS))
    # Fused kernels, biases after all-reduces, norms and the stem: whole.
    self.assertEqual(b["sa"]["mat_qkv"]["kernel"], (None, None, None))
    self.assertEqual(b["sa"]["proj"]["bias"], (None, None))
    self.assertEqual(got["stem"]["head"]["kernel"], (None, None))


if __name__ == "__main__":
  absltest.main()
