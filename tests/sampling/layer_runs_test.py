"""How a run of layers executes: scan, while loop and Python loop agree;
the two KV-cache reads; one trace for unrolled layers."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax.models import layers
from toprovar_jax.sampling import layer_runs

# Layer l adds w[l] to the carry and returns carry * l as its output.
_W = jnp.array([1.0, 10.0, 100.0, 1000.0, 10000.0])


def _body(carry, xs):
  l, extra = xs if isinstance(xs, tuple) else (xs, None)
  w = _W[l]
  if extra is not None:
    w = w + extra
  carry = carry + w
  return carry, carry * l


class RunLayersTest(absltest.TestCase):

  def test_scan_while_and_unrolled_agree(self):
    carry = jnp.zeros((2,))
    out = {}
    for name, lids, kw in (("scan", range(1, 4), {}),
                           ("while", range(1, 4), dict(while_loop=True)),
                           ("python", [1, 2, 3], {})):
      out[name] = layer_runs.run_layers(_body, carry, lids, unroll=1, **kw)
    for name in ("while", "python"):
      np.testing.assert_array_equal(out[name][0], out["scan"][0])
      np.testing.assert_array_equal(out[name][1], out["scan"][1])
    np.testing.assert_array_equal(out["scan"][0], [1110.0, 1110.0])
    # ys stacked per layer: carry after layer l, times l.
    np.testing.assert_array_equal(out["scan"][1][:, 0],
                                  [10.0, 2 * 110.0, 3 * 1110.0])

  def test_extra_per_layer_inputs(self):
    extra = jnp.array([0.5, 0.25])
    for lids, kw in ((range(0, 2), {}), (range(0, 2), dict(while_loop=True)),
                     ([0, 1], {})):
      carry, _ = layer_runs.run_layers(_body, jnp.zeros(()), lids, extra,
                                       unroll=1, **kw)
      self.assertEqual(float(carry), 1.0 + 0.5 + 10.0 + 0.25)


class KVTest(absltest.TestCase):

  def test_slice_reads_the_prefix_and_writes_after(self):
    kc = jnp.arange(2 * 1 * 4 * 1 * 1, dtype=jnp.float32).reshape(2, 1, 4, 1,
                                                                   1)
    vc = -kc
    got = layer_runs.kv_in(False, kc, vc, 1, 2)["kv_prefix"]
    np.testing.assert_array_equal(got[0][0, :, 0, 0], [4.0, 5.0])
    np.testing.assert_array_equal(got[1], -got[0])
    self.assertIsNone(layer_runs.kv_in(False, kc, vc, 1, 0)["kv_prefix"])
    new = jnp.full((1, 2, 1, 1), 9.0)
    k2, v2 = layer_runs.kv_out(False, kc, vc, 1, (new, new), 2, True)
    np.testing.assert_array_equal(k2[1, 0, :, 0, 0], [4.0, 5.0, 9.0, 9.0])
    np.testing.assert_array_equal(k2[0], kc[0])
    # The last scale writes nothing.
    k3, _ = layer_runs.kv_out(False, kc, vc, 1, (new, new), 2, False)
    self.assertIs(k3, kc)

  def test_buffer_hands_the_whole_cache_to_the_layer(self):
    kc = jnp.zeros((2, 1, 4, 1, 1))
    got = layer_runs.kv_in(True, kc, kc, 1, 3)["kv_buffer"]
    self.assertIsInstance(got, layers.KVBuffer)
    self.assertEqual((got.layer, got.offset), (1, 3))
    pair = (jnp.ones(()), jnp.zeros(()))
    self.assertIs(layer_runs.kv_out(True, kc, kc, 1, pair, 3, True), pair)


class TraceOnceTest(absltest.TestCase):

  def test_array_values_share_a_trace_static_leaves_do_not(self):
    traces = []

    def f(x, *, scale):
      traces.append(scale)
      return x * scale

    g = layer_runs.TraceOnce(f)

    @jax.jit
    def prog(x):
      return g(x, scale=2) + g(x + 1, scale=2) + g(x, scale=3)

    self.assertEqual(float(prog(jnp.float32(1.0))), 2.0 + 4.0 + 3.0)
    self.assertEqual(traces, [2, 3])

  def test_layer_copies(self):
    blocks = {"w": jnp.arange(6.0).reshape(3, 2)}
    params, tkv = layer_runs.layer_copies(blocks, None, 3)
    self.assertIsNone(tkv)
    self.assertLen(params, 3)
    np.testing.assert_array_equal(params[2]["w"], [4.0, 5.0])


if __name__ == "__main__":
  absltest.main()
