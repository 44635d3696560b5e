"""Prefix / suffix programs (`sampling.branching`).

On the micro Infinity config (4 scales, 3 layers, random weights, fp32 CPU)
with a one-level BSQ tokenizer: a prefix over scales [0, 2) then the suffix
of a full plan gives the same tokens and logits as the one-program Sampler
(dense, and a pruned plan whose cache layout differs from the prefix's);
per-image choices are regrouped by suffix and put back in order, each image
the same as the static run of the plan it chose, at any batch size.
"""

import dataclasses
import functools

from absl.testing import absltest
import jax.numpy as jnp
import numpy as np

from toprovar_jax import flops as flops_lib
from toprovar_jax import testing
from toprovar_jax.models import config as config_lib
from toprovar_jax.sampling import branching
from toprovar_jax.sampling import conditions as conditions_lib
from toprovar_jax.sampling import runner
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.sampling import state as state_lib
from toprovar_jax.sparsity import baselines
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import validation

_T = 8
_TOK = config_lib.BSQConfig(base_ch=32, ch_mult=(1,), num_res_blocks=0,
                            codebook_dim=4)


@functools.lru_cache(maxsize=None)
def _setup():
  cfg, params, vae, _, text, mask = testing.micro_infinity_run(5)
  pruned = validation.validate_plan(testing.probe_sx_plan(cfg), cfg)
  skip = baselines.skipvar_plan(cfg, skip_scales=1)
  return cfg, params, vae, text, mask, pruned, skip


@dataclasses.dataclass(frozen=True)
class _ByLatent:
  """Test policy: the plan an image takes is a function of its own latent."""
  k: int
  needs_entropy = False

  def features(self, br, vae_params, latents, st):
    del br, vae_params, st
    return jnp.mean(latents[-1], axis=(1, 2, 3))[:, None]

  def choose(self, feats):
    return (np.floor(np.abs(feats[:, 0]) * 1e4).astype(np.int64)) % self.k


def _sampler(cfg, plan, **sampling):
  return sampler_lib.Sampler(model=cfg, tokenizer=_TOK, plan=plan,
                             sampling=sampler_lib.SamplingConfig(**sampling))


def _branching(cfg, plans, d=2, **sampling):
  return branching.Branching(
      name="test", suffixes=tuple(_sampler(cfg, p, **sampling) for p in plans),
      decision_scale=d, policy=_ByLatent(len(plans)))


class PrefixSuffixTest(absltest.TestCase):

  def test_prefix_then_suffix_equals_one_program_and_regroups_in_order(self):
    cfg, params, vae, text, mask, pruned, skip = _setup()
    plans = (None, pruned, skip)  # dense: the longest, the prefix's plan
    br = _branching(cfg, plans, return_logits=True)
    cond = conditions_lib.Conditions(text=text, text_mask=mask)
    kw = dict(seed=3, cfg_scale=3.0, tau=1.0)
    opts = runner.compiler_options()
    run = branching.Run(br, params, vae, cond, batch_size=5,
                        guidance=(3.0, 1.0), options=opts, seed=3)
    st, _, keys, _ = run.prefix_batch(0)
    g, tau = jnp.float32(3.0), jnp.float32(1.0)
    arrays = dict(text=jnp.asarray(text), text_mask=jnp.asarray(mask))
    static = {}
    for k, smp in enumerate(br.suffixes):
      # pruned and skip have other cache layouts than the dense prefix.
      got = run.suffix_fn(k)(params, vae, st, keys, g, tau)
      one = runner.compile_generate(smp, params, None, keys, arrays,
                                    options=opts)
      want = one.fn(params, None, keys, g, tau, **arrays)
      for field in ("tokens", "logits", "latent"):
        np.testing.assert_array_equal(np.asarray(getattr(got, field)),
                                      np.asarray(getattr(want, field)))
      static[br.plans[k].name] = np.asarray(
          runner.decode(smp, vae, want.latent))

    # Per-image choices, pooled into batches of 2 rows per suffix: every
    # image is its static plan's image (same key, other batch-mates).
    out = runner.generate_images(br, params, vae, cond, batch_size=2, **kw)
    self.assertGreater(len(set(out.plan_per_image)), 1)
    choices = br.policy.choose(np.asarray(run.prefix_batch(0)[1]))
    self.assertEqual(out.plan_per_image,
                     tuple(br.plans[c].name for c in choices))
    for i, name in enumerate(out.plan_per_image):
      np.testing.assert_array_equal(out.images[i], static[name][i])
      self.assertEqual(out.flops_per_image[i], flops_lib.plan_flops(
          br.plans[choices[i]], cfg).total)
    self.assertEqual(out.images.shape, (5, 6, 6, 3))

  def test_plans_must_share_the_prefix(self):
    cfg, _, _, _, _, pruned, _ = _setup()
    with self.assertRaisesRegex(plan_lib.PlanError,
                                r"plan 'pruned', scale 2, field 'scales'"):
      _branching(cfg, (None, pruned), d=3)


class RowsTest(absltest.TestCase):

  def test_take_and_concat_rows_keep_both_halves_of_an_image(self):
    cfg, params, vae, text, mask, pruned, skip = _setup()
    br = _branching(cfg, (None, pruned, skip), return_logits=True)
    cond = conditions_lib.Conditions(text=text, text_mask=mask)
    st = branching.Run(br, params, vae, cond, batch_size=5, seed=3,
                       guidance=(3.0, 1.0),
                       options=runner.compiler_options()).prefix_batch(0)[0]
    a = state_lib.take_rows(st, [3, 1])
    b = state_lib.take_rows(st, [4])
    both = state_lib.concat_rows([a, b])
    self.assertEqual(both.batch, 3)
    k = np.asarray(both.caches[0][0])
    k0 = np.asarray(st.caches[0][0])
    np.testing.assert_array_equal(k[:, [0, 1, 2]], k0[:, [3, 1, 4]])
    np.testing.assert_array_equal(k[:, [3, 4, 5]], k0[:, [8, 6, 9]])
    np.testing.assert_array_equal(np.asarray(both.latent),
                                  np.asarray(st.latent)[[3, 1, 4]])
    np.testing.assert_array_equal(np.asarray(both.tokens[1]),
                                  np.asarray(st.tokens[1])[[3, 1, 4]])


if __name__ == "__main__":
  absltest.main()
