"""Per-scale profile attribution: HLO scopes, the scale timeline, kernel
classes, and a traced call (CPU: the trace's thunks name their HLO ops)."""

import tempfile

from absl.testing import absltest
import jax
import jax.numpy as jnp

from toprovar_jax.bench import profile

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


class ProfileAttributionTest(absltest.TestCase):

  def test_hlo_scopes(self):
    scopes = profile.hlo_scopes(_HLO)
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
    t = profile.scale_timeline(events, scopes)
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
      self.assertEqual(profile.kernel_class(name), cls, name)
    t = profile.scale_timeline(
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
      prof = profile.profile_summary(lambda: f(x), d, hlo_text=hlo)
    scales = [r["scale"] for r in prof["scales"]["per_scale"]]
    self.assertEqual(scales, [0, 1])
    self.assertGreater(prof["device_busy_ms"], 0.0)


if __name__ == "__main__":
  absltest.main()
