"""SkipVAR's and adaptive ToProVAR's per-image features and choices
(`sampling.policies`), against direct NumPy computations."""

import dataclasses

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax import testing
from toprovar_jax.models import config as config_lib
from toprovar_jax.sampling import policies
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.sparsity import adaptive
from toprovar_jax.sparsity import classifier
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.weights import loading


def _np_sobel(gray):
  """Zero-padded 3x3 cross-correlation with [[1,0,-1],[2,0,-2],[1,0,-1]]."""
  kx = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float64)
  g = np.pad(gray, 1)
  h, w = gray.shape
  gx, gy = np.zeros((h, w)), np.zeros((h, w))
  for y in range(h):
    for x in range(w):
      win = g[y:y + 3, x:x + 3]
      gx[y, x] = np.sum(win * kx)
      gy[y, x] = np.sum(win * kx.T)
  return np.hypot(gx, gy)


def _np_hf_ratio(gray, ratio):
  amp = np.abs(np.fft.fftshift(np.fft.fft2(gray)))
  h, w = gray.shape
  r = int(ratio * min(h, w) / 2)
  far = [[np.hypot(y - h // 2, x - w // 2) > r for x in range(w)]
         for y in range(h)]
  return amp[np.array(far)].sum() / (amp.sum() + 1e-6)


class FeaturesTest(absltest.TestCase):

  def test_hf_features_match_numpy(self):
    rng = np.random.default_rng(0)
    old = rng.uniform(-1, 1, (2, 16, 12, 3)).astype(np.float32)
    new = rng.uniform(-1, 1, (2, 16, 12, 3)).astype(np.float32)
    got = np.asarray(policies.hf_features(jnp.asarray(old), jnp.asarray(new),
                                          0.4))
    for b in range(2):
      og, ng = old[b].mean(-1), new[b].mean(-1)
      diff = np.mean(np.abs(_np_sobel(ng) - _np_sobel(og)))
      np.testing.assert_allclose(got[b], [diff, _np_hf_ratio(ng, 0.4)],
                                 rtol=1e-5)
    # A flat image has no high frequencies and no edges inside.
    flat = jnp.zeros((1, 8, 8, 3)) + 0.5
    f = np.asarray(policies.hf_features(flat, flat, 0.4))
    np.testing.assert_allclose(f, [[0.0, 0.0]], atol=1e-6)

  def test_rho_is_the_share_below_the_mean_over_f_layers(self):
    rng = np.random.default_rng(1)
    ent = rng.uniform(0, 2, (4, 3, 10)).astype(np.float32)
    ent[1] = np.nan  # an S layer: not recorded
    got = np.asarray(policies.rho(jnp.asarray(ent)))
    h = ent[[0, 2, 3]].mean(0)
    want = (h < h.mean(1, keepdims=True)).mean(1)
    np.testing.assert_allclose(got, want)

  def test_small_decode_is_the_feature_scale_grid(self):
    cfg = testing.micro_infinity()
    tok = config_lib.BSQConfig(base_ch=32, ch_mult=(1,), num_res_blocks=0,
                               codebook_dim=4)
    vae = jax.tree.map(lambda s: jnp.full(s.shape, 0.01, s.dtype),
                       loading.abstract_tokenizer(cfg, tok))
    img = policies.small_decode(cfg, tok, vae, jnp.ones((2, 6, 6, 4)), 2)
    self.assertEqual(img.shape, (2, 4, 4, 3))


class GeneratorsTest(absltest.TestCase):

  def _base(self):
    cfg = config_lib.get_variant("emoji")
    return sampler_lib.Sampler(model=cfg,
                               tokenizer=config_lib.get_tokenizer("emoji"))

  def test_skipvar_classes_become_suffix_plans(self):
    base = self._base()
    spec = classifier.SkipVarSpec(
        model="emoji", decision_scale=10, feature_scale=3, freq_ratio=0.4,
        classes=("skipvar_skip0", "skipvar_skip3", "skipvar_skip0_uncond11"),
        classifier=classifier.Logistic(mean=(0., 0.), scale=(1., 1.),
                                       weights=((1., 0., -1.),) * 2,
                                       bias=(0., 0., 0.)))
    br = policies.skipvar_branching(base, spec)
    self.assertEqual([p.num_generated for p in br.plans], [13, 10, 13])
    self.assertEqual(br.prefix.resolved_plan.num_generated, 13)
    np.testing.assert_array_equal(
        br.policy.choose(np.array([[1.0, 1.0], [-1.0, -1.0]])), [0, 2])
    with self.assertRaisesRegex(ValueError, "field 'model'"):
      policies.skipvar_branching(
          base, dataclasses.replace(spec, model="emoji_v1"))
    hash(br)

  def test_adaptive_records_entropy_in_the_prefix_only(self):
    base = self._base()
    plans = adaptive.family(plan_lib.dense_plan(base.model), (13,),
                            base.model) + (plan_lib.dense_plan(base.model),)
    plans = (dataclasses.replace(plans[1], name="d2"),
             dataclasses.replace(plans[0], name="d1"))
    spec = adaptive.AdaptiveSpec(name="a", decision_scale=10,
                                 statistic_scales=(8, 9), plans=plans,
                                 thresholds=(0.5,))
    br = policies.adaptive_branching(base, spec)
    self.assertTrue(br.prefix.sampling.record_entropy)
    self.assertFalse(br.suffixes[0].sampling.record_entropy)
    np.testing.assert_array_equal(
        br.policy.choose(np.array([[0.4, 0.5], [0.5, 0.6]])), [0, 1])


if __name__ == "__main__":
  absltest.main()
