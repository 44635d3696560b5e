"""Scale sampler: KV-cache equivalence, no recompilation, sampling rules."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax import parity
from toprovar_jax import testing
from toprovar_jax.convert import common
from toprovar_jax.convert import transformer as convert_transformer
from toprovar_jax.models import config as config_lib
from toprovar_jax.models import transformer
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.sampling import strategies


@functools.lru_cache(maxsize=None)
def _setup(name):
  ref = testing.load_reference(name)
  cfg = config_lib.get_variant(name)
  tok = config_lib.get_tokenizer(name)
  pre = "var/" if cfg.style == "var" else "infinity/"
  params = convert_transformer.convert_transformer(
      common.strip_prefix(ref, pre), cfg)
  if cfg.style == "var":
    from toprovar_jax.convert import vqvae as convert_vqvae
    vparams = convert_vqvae.convert_vqvae(common.strip_prefix(ref, "vae/"), tok)
    cond = dict(labels=jnp.asarray(ref["tf/labels"]))
  else:
    vparams = None
    text, mask = parity._padded_text(ref, cfg)
    cond = dict(text=text, text_mask=mask)
  return ref, cfg, tok, params, vparams, cond


class CacheEquivalenceTest(parameterized.TestCase):
  """Per-scale KV-cached logits == full block-causal teacher-forced forward."""

  @parameterized.named_parameters(("var", "var_tiny"),
                                  ("infinity", "infinity_tiny"))
  def test_cached_equals_teacher_forced(self, name):
    ref, cfg, tok, params, vparams, cond = _setup(name)
    gt = ref["tf/gt_idx"] if cfg.style == "var" else ref["tf/gt_bits"]
    inputs = (ref["tf/x_BLCv_wo_first_l"] if cfg.style == "var"
              else ref["tf/x_BLC_wo_prefix"])
    tf_logits = transformer.teacher_forced_logits(
        params, cfg, inputs=jnp.asarray(inputs), **cond)
    smp = sampler_lib.Sampler(
        model=cfg, tokenizer=tok,
        sampling=sampler_lib.SamplingConfig(top_k=1, return_logits=True))
    # Guidance off (VAR cfg 0: t = 0; Infinity cfg 1, τ 1) -> the sampler's
    # logits are the conditional rows of the cached forward.
    cfg_scale = 0.0 if cfg.style == "var" else 1.0
    out = smp.generate(params, vparams, jax.random.key(0),
                       jnp.float32(cfg_scale), jnp.float32(1.0),
                       forced=jnp.asarray(gt), **cond)
    chex.assert_trees_all_close(out.logits, tf_logits, atol=1e-5, rtol=0)
    # Forced choices are returned as the tokens.
    np.testing.assert_array_equal(np.asarray(out.tokens), gt)


class NoRecompileTest(absltest.TestCase):

  def test_seeds_labels_and_guidance_do_not_retrace(self):
    _, cfg, tok, params, vparams, _ = _setup("var_tiny")
    smp = sampler_lib.Sampler(
        model=cfg, tokenizer=tok,
        sampling=sampler_lib.SamplingConfig(top_k=4, top_p=0.9))
    fn = jax.jit(chex.assert_max_traces(smp._generate, n=1))
    outs = []
    for seed, labels, g in ((0, [1, 2], 1.5), (1, [7, 999], 4.0),
                            (2, [3, 3], 0.5)):
      out = fn(params, vparams, jax.random.key(seed), jnp.float32(g),
               jnp.float32(1.0), jnp.asarray(labels, jnp.int32), None, None,
               None)
      outs.append(np.asarray(out.tokens))
    # Different seeds / labels give different samples (top-k 4 sampling).
    self.assertFalse(np.array_equal(outs[0], outs[1]))

  def test_same_seed_same_sample(self):
    _, cfg, tok, params, vparams, cond = _setup("var_tiny")
    smp = sampler_lib.Sampler(
        model=cfg, tokenizer=tok,
        sampling=sampler_lib.SamplingConfig(top_k=8, top_p=0.95))
    a = smp.generate(params, vparams, jax.random.key(3), jnp.float32(1.5),
                     jnp.float32(1.0), **cond)
    b = smp.generate(params, vparams, jax.random.key(3), jnp.float32(1.5),
                     jnp.float32(1.0), **cond)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    self.assertEqual(a.tokens.shape, (2, cfg.seq_len))
    self.assertTrue(np.all(np.asarray(a.tokens) < cfg.vocab_size))


class StrategiesTest(parameterized.TestCase):

  def test_top_k_keeps_ties_like_torch(self):
    logits = jnp.array([[1.0, 3.0, 3.0, 0.5, 2.0]])
    out = strategies.top_k_top_p_filter(logits, top_k=2, top_p=0.0)
    np.testing.assert_array_equal(np.isfinite(np.asarray(out)),
                                  [[False, True, True, False, False]])

  def test_top_p_golden(self):
    # softmax([0, 1, 2, 3]) = [.032, .087, .237, .644]; ascending cumsum
    # [.032, .119, .356, 1.0]. top_p 0.7 removes entries with cum <= 0.3.
    logits = jnp.log(jnp.array([[0.032, 0.087, 0.237, 0.644]]))
    out = strategies.top_k_top_p_filter(logits, top_k=0, top_p=0.7)
    np.testing.assert_array_equal(np.isfinite(np.asarray(out)),
                                  [[False, False, True, True]])
    # Always keeps the largest, even at top_p -> 0+.
    out = strategies.top_k_top_p_filter(logits, top_k=0, top_p=1e-6)
    np.testing.assert_array_equal(np.isfinite(np.asarray(out)),
                                  [[False, False, False, True]])

  def test_top_p_unsorted_vocabulary_order(self):
    logits = jnp.log(jnp.array([[0.644, 0.032, 0.237, 0.087]]))
    out = strategies.top_k_top_p_filter(logits, top_k=0, top_p=0.7)
    np.testing.assert_array_equal(np.isfinite(np.asarray(out)),
                                  [[True, False, True, False]])

  def test_greedy_is_argmax(self):
    logits = jax.random.normal(jax.random.key(0), (3, 7, 11))
    np.testing.assert_array_equal(
        strategies.sample(jax.random.key(1), logits, top_k=1, top_p=0.0),
        jnp.argmax(logits, -1))

  def test_guidance_formulas(self):
    cond, unc = jnp.full((1, 1, 2), 2.0), jnp.full((1, 1, 2), 1.0)
    both = jnp.concatenate([cond, unc])
    # VAR ramp at si = 9 of 10 with cfg 1.5: t = 1.5 -> 2.5*2 - 1.5*1 = 3.5.
    np.testing.assert_allclose(strategies.guide_var(both, 1.5, 9, 10), 3.5)
    np.testing.assert_allclose(strategies.guide_var(both, 1.5, 0, 10), 2.0)
    # Infinity: (3*2 - 2*1) / 0.5 = 8.
    np.testing.assert_allclose(strategies.guide_infinity(both, 3.0, 0.5), 8.0)


if __name__ == "__main__":
  absltest.main()
