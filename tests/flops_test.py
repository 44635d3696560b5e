"""Golden FLOP numbers (ARCHITECTURES §C.1, §C.2, §E) and the paper plan."""

import dataclasses

from absl.testing import absltest
from absl.testing import parameterized

from toprovar_jax import flops
from toprovar_jax.models import config as config_lib
from toprovar_jax.sparsity import baselines
from toprovar_jax.sparsity import named
from toprovar_jax.sparsity import plan as plan_lib

_2B = config_lib.get_variant("infinity_2b")
_D30 = config_lib.get_variant("var_d30")
_RTOL = 0.02
_TERA = 1e12

# ARCHITECTURES §E.1: Infinity-2B per-scale (linear, self-attn, cross-attn,
# total) TFLOP, 1024², CFG batch 2, T = 64; total 116.2.
_E1 = (
    (0.006, 0.000, 0.070, 0.076),
    (0.026, 0.000, 0.073, 0.099),
    (0.103, 0.000, 0.086, 0.190),
    (0.232, 0.001, 0.109, 0.342),
    (0.412, 0.004, 0.140, 0.556),
    (0.928, 0.020, 0.228, 1.176),
    (1.649, 0.070, 0.352, 2.072),
    (2.577, 0.193, 0.512, 3.282),
    (3.711, 0.452, 0.707, 4.870),
    (6.597, 1.353, 1.203, 9.154),
    (10.308, 3.457, 1.840, 15.606),
    (14.843, 7.761, 2.620, 25.226),
    (26.388, 22.594, 4.604, 53.588),
)
# ARCHITECTURES §E.2: VAR-d30 per-scale totals, 256², total 3.76.
_E2 = (0.005, 0.021, 0.048, 0.086, 0.134, 0.194, 0.346, 0.546, 0.935, 1.447)


def _close(got_tflop, want_tflop, *, rtol=_RTOL, atol=0.0005):
  # atol = half of the table's last printed digit (its rounding).
  return abs(got_tflop - want_tflop) <= max(rtol * want_tflop, atol)


class DenseTest(parameterized.TestCase):

  def test_infinity_2b_total(self):
    result = flops.dense_flops(_2B)
    self.assertTrue(_close(result.total / _TERA, 116.2), result.total)
    comp = result.by_component
    self.assertTrue(_close(comp["linear"] / _TERA, 67.8))
    self.assertTrue(_close(comp["self_attn"] / _TERA, 35.9))
    self.assertTrue(_close(comp["cross_attn"] / _TERA, 12.6))
    self.assertEqual(comp["head"], 0.0)  # bit head left out, as in §E

  @parameterized.parameters(range(13))
  def test_infinity_2b_per_scale(self, s):
    result = flops.dense_flops(_2B)
    comp = result.by_scale_component[s]
    got = (comp["linear"], comp["self_attn"], comp["cross_attn"],
           result.by_scale[s])
    for g, want in zip(got, _E1[s]):
      self.assertTrue(_close(g / _TERA, want), (s, g / _TERA, want))

  def test_infinity_2b_structure(self):
    result = flops.dense_flops(_2B)
    self.assertLen(result.by_scale_layer, 13)
    self.assertLen(result.by_scale_layer[0], 32)
    self.assertAlmostEqual(
        sum(map(sum, result.by_scale_layer)) + result.by_component["head"],
        result.total, delta=1.0)
    self.assertAlmostEqual(sum(result.by_scale), result.total, delta=1.0)
    # Last-scale shares 46.1 / 67.8 / 81.2 % (§E.1).
    for k, share in ((1, 46.1), (2, 67.8), (3, 81.2)):
      self.assertAlmostEqual(
          100 * sum(result.by_scale[-k:]) / result.total, share, delta=0.1)

  def test_var_d30(self):
    result = flops.dense_flops(_D30)
    self.assertTrue(_close(result.total / _TERA, 3.76), result.total)
    self.assertEqual(result.by_component["cross_attn"], 0.0)
    for s, want in enumerate(_E2):
      self.assertTrue(_close(result.by_scale[s] / _TERA, want),
                      (s, result.by_scale[s] / _TERA, want))

  @parameterized.parameters(("var_d16", 0.60), ("var_d36", 22.8),
                            ("infinity_8b", 385.5))
  def test_other_sizes(self, name, want):
    got = flops.dense_flops(config_lib.get_variant(name)).total / _TERA
    self.assertTrue(_close(got, want), (name, got))

  def test_text_kv_once(self):
    # Computing the text K/V once per layer and sequence saves 12 of the 13
    # per-scale 4·T·C² projections in each of 32 layers and 2 sequences.
    recomputed = flops.dense_flops(_2B).total
    once = flops.dense_flops(_2B, recompute_text_kv=False).total
    self.assertEqual(recomputed - once, 12 * 32 * 2 * 4 * 64 * 2048**2)

  def test_decode(self):
    self.assertEqual(flops.image_size(_2B), (1024, 1024))
    self.assertEqual(flops.image_size(config_lib.get_variant("infinity_8b")),
                     (1024, 1024))
    self.assertAlmostEqual(flops.decode_flops(_2B) / _TERA, 9.85)
    self.assertAlmostEqual(flops.decode_flops(_D30) / _TERA, 0.394)
    self.assertAlmostEqual(  # 512² VAR-d36: 4x the pixels.
        flops.decode_flops(config_lib.get_variant("var_d36")) / _TERA, 1.576)
    self.assertAlmostEqual(
        flops.decode_flops(_2B, image_hw=(512, 1024)) / _TERA, 4.925)


class BaselineTest(parameterized.TestCase):

  def test_fastvar(self):
    # ARCHITECTURES C.1: 116 -> 28 TFLOP, 4.15x.
    plan = baselines.fastvar_plan(_2B)
    result = flops.plan_flops(plan, _2B)
    self.assertTrue(_close(result.total / _TERA, 28.0), result.total)
    reduction = flops.speedup(plan, _2B)
    print(f"FastVAR: {result.total / _TERA:.3f} TFLOP, {reduction:.3f}x")
    self.assertTrue(_close(reduction, 4.15), reduction)
    self.assertEqual(result.by_scale[11:], (0.0, 0.0))

  @parameterized.parameters((1, 1.86), (2, 3.11), (3, 5.33))
  def test_skipvar_skip_last(self, k, want):
    plan = baselines.skipvar_plan(_2B, skip_scales=k)
    self.assertTrue(_close(flops.speedup(plan, _2B), want))

  @parameterized.parameters((12, 1.30), (11, 1.51), (10, 1.68))
  def test_skipvar_uncond_drop(self, s, want):
    plan = baselines.skipvar_plan(_2B, drop_uncond_from=s)
    self.assertTrue(_close(flops.speedup(plan, _2B), want))

  def test_x_layer_costs_nothing(self):
    dense = plan_lib.dense_plan(_2B)
    scales = list(dense.scales)
    scales[12] = dataclasses.replace(scales[12], layers="X" + "F" * 31)
    plan = dataclasses.replace(dense, scales=tuple(scales))
    result = flops.plan_flops(plan, _2B)
    self.assertEqual(result.by_scale_layer[12][0], 0.0)
    self.assertEqual(result.by_scale_layer[12][1:],
                     flops.dense_flops(_2B).by_scale_layer[12][1:])


def _paper_plan_by_hand() -> float:
  """The paper plan's FLOPs written out term by term (ARCHITECTURES §E).

  Scales 0..9 are dense; at scales 10, 11, 12 (N = 1600, 2304, 4096) layers
  0, 1, 2, 31 run all N tokens and layers 3..30 run K = 160, 232, 408 kept
  tokens. Per block, per sequence, per query: linear 8C² + 4CF, cross-attn
  4C² + 4TC; per block and scale: text K/V 4TC²; self-attn 4C per
  (query, key) pair.
  """
  c, f, t, seqs = 2048, 8192, 64, 2
  per_query = 8 * c * c + 4 * c * f + 4 * c * c + 4 * t * c
  text_kv = 4 * t * c * c
  pair = 4 * c
  n = (1, 4, 16, 36, 64, 144, 256, 400, 576, 1024, 1600, 2304, 4096)
  cum = (1, 5, 21, 57, 121, 265, 521, 921, 1497, 2521, 4121, 6425, 10521)
  # Dense prefix, all 32 layers: sum over scales of (queries x keys).
  prefix = 32 * sum(
      n[s] * per_query + text_kv + pair * n[s] * cum[s] for s in range(10))
  # Global layers (4): full tokens, full caches.
  global_ = 4 * sum(
      n[s] * per_query + text_kv + pair * n[s] * cum[s] for s in (10, 11, 12))
  # Detail layers (28): cache 2521 after scale 9, growing by K each scale.
  keeps = (160, 232, 408)
  detail = 0
  cache = 2521
  for k in keeps:
    cache += k
    detail += k * per_query + text_kv + pair * k * cache
  detail *= 28
  return seqs * (prefix + global_ + detail)


class PaperPlanTest(absltest.TestCase):

  def test_predicted_speedup(self):
    plan = named.load_plan("infinity_2b_paper", _2B)
    result = flops.plan_flops(plan, _2B)
    dense = flops.dense_flops(_2B)
    by_hand = _paper_plan_by_hand()
    reduction = dense.total / result.total
    print("\n" + flops.format_flops(result, plan))
    print(f"infinity_2b_paper: {result.total / _TERA:.3f} TFLOP vs dense "
          f"{dense.total / _TERA:.3f}: {reduction:.3f}x "
          f"({flops.speedup(plan, _2B, with_decode=True):.3f}x with the "
          "BSQ decode)")
    self.assertEqual(result.total, by_hand)  # exact: integer arithmetic
    self.assertAlmostEqual(reduction, 2.8906, places=4)
    self.assertEqual(result.by_scale[:10], dense.by_scale[:10])


class ImageSizeTest(absltest.TestCase):

  def test_image_size_comes_from_the_tokenizer_stride(self):
    emoji = config_lib.get_variant("emoji")
    tok = config_lib.TOKENIZERS["emoji"]
    self.assertEqual(tok.stride, 4)
    self.assertEqual(flops.image_size(emoji, tok), (128, 128))
    self.assertEqual(flops.image_size(emoji), (512, 512))  # 16 px a token
    self.assertEqual(flops.decode_flops(emoji, tokenizer=tok),
                     flops.BSQ_DECODE_FLOPS_1024 * 128 * 128 / 1024**2)
    i2b = config_lib.get_variant("infinity_2b")
    self.assertEqual(flops.image_size(i2b, config_lib.TOKENIZERS[
        "infinity_2b"]), (1024, 1024))


if __name__ == "__main__":
  absltest.main()
