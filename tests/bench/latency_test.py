"""The benchmark's bookkeeping: plan specs, result keys, per-scale profile
attribution and the source digest (the timings themselves run on the GPU)."""

import re
import tempfile

from absl.testing import absltest
import jax
import jax.numpy as jnp

from experiments import benchmark
from toprovar_jax import benchmarking
from toprovar_jax import testing
from toprovar_jax.models import config as config_lib

_HLO = """\
HloModule jit_f, entry_computation_layout={()->f32[]}

%fused_computation.7 (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %sine.1 = f32[4]{0} sine(%p), metadata={op_name="jit(f)/scale05/sin"}
}

ENTRY %main.3 (a: f32[4]) -> f32[4] {
  %a = f32[4]{0} parameter(0)
  %loop_add_fusion.2 = f32[4]{0} fusion(%a), kind=kLoop, calls=%c, metadata={op_name="jit(f)/scale03/while/body/add"}
  %fusion.7 = f32[4]{0} fusion(%loop_add_fusion.2), kind=kLoop, calls=%fused_computation.7
  ROOT %copy.1 = f32[4]{0} copy(%fusion.7), metadata={op_name="jit(f)/prologue"}
}
"""


class PlanSpecTest(absltest.TestCase):

  def test_every_suffix(self):
    cfg = config_lib.get_variant("infinity_2b")
    plan, impl, unroll, kv_read, unroll_tokens = benchmark._plan(
        "infinity_2b_paper@cudnn~frequency#u2%buffer^512", cfg)
    self.assertEqual(plan.name, "infinity_2b_paper~frequency")
    self.assertEqual({s.scorer for s in plan.scales}, {"none", "frequency"})
    self.assertEqual((impl, unroll, kv_read, unroll_tokens),
                     ("cudnn", 2, "buffer", 512))
    plan, impl, unroll, kv_read, unroll_tokens = benchmark._plan("dense", cfg)
    self.assertEqual((plan.name, impl, unroll, kv_read, unroll_tokens),
                     ("dense", None, 1, "slice", 0))

  def test_skipvar_action(self):
    cfg = config_lib.get_variant("var_d30")
    plan = benchmark._plan("skipvar_skip1_uncond8", cfg)[0]
    self.assertEqual(plan.name, "skipvar_skip1_uncond8")
    self.assertEqual(plan.exit_scale, len(cfg.schedule) - 1)
    self.assertEqual([s.guidance for s in plan.scales],
                     [s < 8 for s in range(len(cfg.schedule) - 1)])

  def test_result_key_round_trips_the_suffixes(self):
    row = dict(plan="dense", entropy_impl=None, layer_unroll=1,
               kv_read="slice", unroll_tokens=0)
    self.assertEqual(benchmarking.result_key(row), "dense@None#u1")
    row.update(kv_read="buffer", unroll_tokens=1024)
    self.assertEqual(benchmarking.result_key(row), "dense@None#u1%buffer^1024")
    row.update(layer_loop="while")
    self.assertEqual(benchmarking.result_key(row),
                     "dense@None#u1%buffer^1024+while")


class ProfileAttributionTest(absltest.TestCase):

  def test_hlo_scopes(self):
    scopes = benchmarking.hlo_scopes(_HLO)
    self.assertEqual(scopes["loop_add_fusion.2"], 3)
    # No metadata of its own: the scale of the computation it calls.
    self.assertEqual(scopes["fusion.7"], 5)
    # GPU kernels are named after the fusion with "." -> "_".
    self.assertEqual(scopes["fusion_7"], 5)
    self.assertNotIn("copy.1", scopes)  # no scale scope

  def test_scale_timeline_partitions_the_span(self):
    scopes = {"a": 0, "b": 1}
    events = [  # (start_ns, end_ns, kernel name, hlo_op)
        (0, 1_000_000, "setup", None),            # before any scale
        (1_000_000, 2_000_000, "a_kernel", "a"),
        (3_000_000, 4_000_000, "cudnn_sdpa", None),  # inherits scale 0
        (5_000_000, 7_000_000, "b", None),          # by kernel name
        (5_500_000, 6_000_000, "a_kernel", "a"),    # overlaps: no wall
    ]
    t = benchmarking.scale_timeline(events, scopes)
    rows = {r["scale"]: r for r in t["per_scale"]}
    self.assertAlmostEqual(rows[0]["wall_ms"], 3.0)  # 1 + (gap 1 + 1)
    self.assertAlmostEqual(rows[0]["busy_ms"], 2.5)
    self.assertEqual(rows[0]["kernels"], 3)
    self.assertAlmostEqual(rows[1]["wall_ms"], 3.0)  # gap 1 + 2
    self.assertAlmostEqual(t["unattributed_wall_ms"], 1.0)
    self.assertAlmostEqual(t["inherited_ms"], 1.0)
    self.assertAlmostEqual(
        sum(r["wall_ms"] for r in t["per_scale"]) + t["unattributed_wall_ms"],
        7.0)  # the traced span

  def test_kernel_classes(self):
    cases = {
        "loop_dynamic_slice_fusion_42": "weight_or_cache_slice",
        "loop_dynamic_update_slice_fusion_9": "cache_write",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop": "attention",
        "nvjet_sm90_tst_128x160_64x5_2x1_v_bz_NNT": "gemm",
        "gemm_fusion_dot_118": "gemm",
        "input_concatenate_fusion_35": "concat_copy",
        "Memset 3": "concat_copy",
        "loop_add_fusion_18": "elementwise",
    }
    for name, cls in cases.items():
      self.assertEqual(benchmarking.kernel_class(name), cls, name)
    t = benchmarking.scale_timeline(
        [(0, 2_000_000, "loop_dynamic_slice_fusion_1", "a"),
         (2_000_000, 3_000_000, "nvjet_x", None)], {"a": 0})
    self.assertEqual(t["per_scale"][0]["busy_by_class"],
                     {"weight_or_cache_slice": 2.0, "gemm": 1.0})

  def test_profile_summary_attributes_a_traced_call(self):
    @jax.jit
    def f(x):
      for i in range(2):
        with jax.named_scope(f"scale{i:02d}"):
          x = jnp.sin(x @ x)
      return x

    x = jnp.ones((64, 64))
    hlo = f.lower(x).compile().as_text()
    with tempfile.TemporaryDirectory() as d:
      prof = benchmarking.profile_summary(lambda: f(x), d, hlo_text=hlo)
    scales = [r["scale"] for r in prof["scales"]["per_scale"]]
    self.assertEqual(scales, [0, 1])
    self.assertGreater(prof["device_busy_ms"], 0.0)


class CompileOnlyTest(absltest.TestCase):

  def test_compiles_on_abstract_weights(self):
    setup = benchmarking.BenchSetup(variant="var_tiny", attn_impl="xla",
                                    dtype="float32")
    cfg, tok, params, vparams, _ = benchmarking.init_model(setup,
                                                           abstract=True)
    self.assertIsInstance(jax.tree.leaves(params)[0], jax.ShapeDtypeStruct)
    cond = jax.eval_shape(lambda: benchmarking.conditioning(cfg, setup))
    plan = benchmark._plan("dense", cfg)[0]
    row = benchmarking.compile_plan(cfg, tok, params, vparams, cond, setup,
                                    plan, unroll_tokens=4)
    self.assertEqual((row["plan"], row["backend"], row["unroll_tokens"]),
                     ("dense", jax.default_backend(), 4))
    self.assertGreater(row["compile_s"], 0.0)
    self.assertGreater(row["lower_s"], 0.0)


class CompileBlockChainTest(absltest.TestCase):

  def test_every_block_is_compiled_in_one_or_several_programs(self):
    cfg = testing.micro_infinity()
    kw = dict(tokens=8, text_len=8, dtype="float32")
    one = benchmarking.compile_block_chain(cfg, 1, **kw)
    whole = benchmarking.compile_block_chain(cfg, 4, **kw)
    split = benchmarking.compile_block_chain(cfg, 4, programs=2, **kw)
    # Per block: qkv, SA proj, CA q, CA proj, fc1, fc2 and two products in
    # each of the two XLA attentions.
    self.assertEqual(one["dot_generals"], 10)
    self.assertEqual(whole["dot_generals"], 4 * one["dot_generals"])
    self.assertEqual(split["dot_generals"], whole["dot_generals"])
    self.assertEqual((split["layers"], split["programs"]), (4, 2))
    self.assertGreater(split["compile_s"], 0.0)

  def test_split_must_divide_the_layers(self):
    with self.assertRaisesRegex(ValueError, r"layers \(6\) must be a "
                                r"positive multiple of programs \(4\)"):
      benchmarking.compile_block_chain(testing.micro_var(), 6, programs=4)


class SourceDigestTest(absltest.TestCase):

  def test_stable_hex(self):
    d = benchmarking.source_digest()
    self.assertRegex(d, re.compile(r"^[0-9a-f]{12}$"))
    self.assertEqual(d, benchmarking.source_digest())


if __name__ == "__main__":
  absltest.main()
