"""Plan types: the dense plan, a shipped plan's content, and plans as jit
static arguments."""

from absl.testing import absltest
import jax
import jax.numpy as jnp

from tests.sparsity import small_plans
from toprovar_jax.sparsity import baselines
from toprovar_jax.sparsity import codec
from toprovar_jax.sparsity import layout
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import validation


_2B = small_plans.INFINITY_2B
_paper_plan = small_plans.paper_plan


class ConstructorTest(absltest.TestCase):

  def test_dense(self):
    plan = plan_lib.dense_plan(_2B)
    validation.validate_plan(plan, _2B)
    self.assertIsNone(plan.exit_scale)
    self.assertEqual([sp.keep for sp in plan.scales],
                     list(_2B.tokens_per_scale))
    for sp in plan.scales:
      self.assertEqual(sp.layers, "F" * 32)
      self.assertEqual(sp.scorer, "none")
      self.assertTrue(sp.guidance)

  def test_paper_plan(self):
    plan = _paper_plan()
    self.assertEqual(plan.name, "infinity_2b_paper")
    self.assertEqual(plan.scales[:10], plan_lib.dense_plan(_2B).scales[:10])
    for s, keep in ((10, 160), (11, 232), (12, 408)):
      sp = plan.scales[s]
      self.assertEqual(sp.keep, keep)
      self.assertEqual(sp.keep % 8, 0)
      self.assertEqual(sp.layers, "FFF" + "S" * 28 + "F")
      self.assertEqual(
          (sp.probe_layer, sp.scorer, sp.entropy_from, sp.select,
           sp.share_cfg, sp.restore, sp.cache_from, sp.guidance),
          (2, "entropy", "probe", "scale", True, "passthrough", None, True))


class JitStaticTest(absltest.TestCase):

  def test_equal_plans_share_one_trace(self):
    traces = []

    def f(x, plan):
      traces.append(plan.name)
      return x * layout.kv_cache_lengths(plan)[0]

    g = jax.jit(f, static_argnames="plan")
    a = baselines.fastvar_plan(_2B)
    b = codec.plan_from_json(codec.plan_to_json(a))
    self.assertIsNot(a, b)
    self.assertEqual(float(g(jnp.ones(()), plan=a)), 4121.0)
    self.assertEqual(float(g(jnp.ones(()), plan=b)), 4121.0)
    self.assertLen(traces, 1)


if __name__ == "__main__":
  absltest.main()
