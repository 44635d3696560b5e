"""The benchmark's plan names, execution settings and row keys (the
timings themselves run on the GPU)."""

from absl.testing import absltest
import jax
import numpy as np

from toprovar_jax.bench import latency
from toprovar_jax.models import config as config_lib
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.sparsity import plan as plan_lib


class ResolvePlanTest(absltest.TestCase):

  def test_named_plan_with_a_free_scorer(self):
    cfg = config_lib.get_variant("infinity_2b")
    plan = latency.resolve_plan("infinity_2b_paper", cfg, scorer="frequency")
    self.assertEqual(plan.name, "infinity_2b_paper~frequency")
    self.assertEqual({s.scorer for s in plan.scales}, {"none", "frequency"})
    self.assertEqual(latency.resolve_plan("dense", cfg).name, "dense")
    # Nothing to swap in dense: the same plan, the same name.
    self.assertEqual(latency.resolve_plan("dense", cfg, scorer="frequency"),
                     latency.resolve_plan("dense", cfg))

  def test_skipvar_action(self):
    cfg = config_lib.get_variant("var_d30")
    plan = latency.resolve_plan("skipvar_skip1_uncond8", cfg)
    self.assertEqual(plan.name, "skipvar_skip1_uncond8")
    self.assertEqual(plan.exit_scale, len(cfg.schedule) - 1)
    self.assertEqual([s.guidance for s in plan.scales],
                     [s < 8 for s in range(len(cfg.schedule) - 1)])

  def test_unknown_plan_is_named(self):
    with self.assertRaisesRegex(plan_lib.PlanError, "no_such_plan"):
      latency.resolve_plan("no_such_plan", config_lib.get_variant("var_d16"))


class ExecutionGridTest(absltest.TestCase):

  def test_every_combination_of_the_listed_values(self):
    grid = latency.execution_grid(dict(
        attn_impl=["cudnn"], entropy_impl=["", "pallas"],
        kv_read=["slice", "buffer"], unroll_tokens=["0", "256"],
        layer_unroll=["2"], layer_loop=["scan"]))
    self.assertLen(grid, 8)
    self.assertEqual(grid[0], sampler_lib.ExecutionConfig(
        attn_impl="cudnn", layer_unroll=2))
    self.assertEqual(grid[-1], sampler_lib.ExecutionConfig(
        attn_impl="cudnn", entropy_impl="pallas", kv_read="buffer",
        unroll_tokens=256, layer_unroll=2))
    self.assertEqual(latency.execution_grid({}),
                     (sampler_lib.ExecutionConfig(),))

  def test_bad_settings_are_named(self):
    with self.assertRaisesRegex(ValueError, "--unroll_tokens: 'x'"):
      latency.execution_grid(dict(unroll_tokens=["x"]))
    with self.assertRaisesRegex(ValueError, "kv_read"):
      latency.execution_grid(dict(kv_read=["concat"]))
    with self.assertRaisesRegex(ValueError, "unknown execution setting "
                                "'gemm_bias'"):
      latency.execution_grid(dict(gemm_bias=["fused"]))


class ResultKeyTest(absltest.TestCase):

  def test_plan_and_the_settings_that_are_not_defaults(self):
    ex = latency.execution_fields
    row = dict(plan="dense", execution=ex(sampler_lib.ExecutionConfig()))
    self.assertEqual(latency.result_key(row), "dense")
    row["execution"] = ex(sampler_lib.ExecutionConfig(
        kv_read="buffer", unroll_tokens=1024, layer_loop="while"))
    self.assertEqual(latency.result_key(row),
                     "dense kv_read=buffer layer_loop=while "
                     "unroll_tokens=1024")


class ConditioningTest(absltest.TestCase):

  def test_one_condition_per_image(self):
    setup = latency.BenchSetup(variant="infinity_tiny", batch=3, text_len=16,
                               text_tokens=5)
    cond = latency.conditioning(config_lib.get_variant("infinity_tiny"),
                                setup)
    self.assertEqual(cond.num_samples, 3)
    self.assertEqual(cond.text.shape, (3, 16, 256))
    np.testing.assert_array_equal(cond.text_mask.sum(axis=1), [5, 5, 5])
    var = latency.conditioning(config_lib.get_variant("var_tiny"),
                               latency.BenchSetup(variant="var_tiny", batch=2))
    self.assertEqual(var.labels.shape, (2,))
    self.assertTrue(np.all((0 <= var.labels) & (var.labels < 1000)))

  def test_compiled_program_runs_through_the_runner(self):
    setup = latency.BenchSetup(variant="var_tiny", dtype="float32", batch=2,
                               top_k=1)
    cfg, tok, params, vparams, _ = latency.init_model(setup, abstract=True)
    smp = latency.make_sampler(cfg, tok, setup,
                               latency.resolve_plan("dense", cfg),
                               sampler_lib.ExecutionConfig())
    compiled, args, arrays = latency.compile_program(
        smp, params, vparams, latency.conditioning(cfg, setup))
    self.assertEqual(args[2].shape, (2,))  # one key per image
    self.assertEqual(arrays["labels"].shape, (2,))
    self.assertIn("stablehlo.while", compiled.lowered.as_text())
    self.assertIsInstance(jax.tree.leaves(params)[0], jax.ShapeDtypeStruct)


if __name__ == "__main__":
  absltest.main()
