"""The sampler's pruned path against a NumPy float64 reference.

`sparse_reference.generate` re-implements whole sparse generation from the
SPEC with per-layer K/V lists; these tests run the sampler (fp32, CPU,
kv_read "slice" and "buffer") with forced tokens, so that sampling cannot
diverge, and require for every plan: guided logits of every generated scale
within 1e-5, kept sets equal (each choice, in the order the sampler makes
them, read from `selection.select` through a debug callback) and sorted
ascending, and for `exit_scale` the latent that is decoded. Plans have
K_s < N_s and cover: entropy from the probe and from the previous scale
(area-resized), frequency scoring, select "scale" and "sublayer", share_cfg
on and off, passthrough and cached restore (the real cache of `cache_from`,
area-resized), X layers, exit_scale and the guidance drop, on the micro
VAR-style and Infinity-style models.

Planted bugs, each tried in a scratch copy of the package (2026-12-03,
git archive of this branch, the bug patched in) and not committed:
  * keeping the highest-entropy tokens (`selection.entropy_keep_scores`
    returning +entropy): the 5 plans with entropy scoring fail (kept sets
    differ): probe_previous_x_drop_{infinity,var}, cached_{infinity,var},
    per_row_then_frequency_infinity; exit_infinity (frequency only) passes.
    sparse_test.py and execution_variants_test.py still passed (35 tests).
  * RoPE of the first K_s tokens for the kept ones (`layers.gather_rope`
    returning cos[:K], sin[:K]): the Infinity plans fail (logits off by up
    to 0.69; in cached_infinity a frequency kept set downstream changes
    too). VAR has no RoPE. (The log kept only its first 40 lines, so the
    exact list of failing tests was not recorded.)
  * kept indices not sorted (`selection.top_k_sorted` without the sort):
    all 6 fail `_assert_sorted` ("kept set 0 is not sorted ascending").
"""

import dataclasses
import functools
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from tests.sampling import sparse_reference
from toprovar_jax import testing
from toprovar_jax.models import config as config_lib
from toprovar_jax.models import transformer
from toprovar_jax.models import vqvae
from toprovar_jax.sampling import latents as latents_lib
from toprovar_jax.sampling import runner
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import selection
from toprovar_jax.sparsity import validation

_B = 2
_ATOL = 1e-5
# Kept sets are well defined only if fp32 noise (~1e-6 here) cannot swap the
# last kept and the first dropped token.
_MIN_MARGIN = 1e-4


@functools.lru_cache(maxsize=None)
def _setup(style):
  """(cfg, tokenizer, params, vae params, conditioning, forced tokens)."""
  rng = np.random.RandomState(3)
  if style == "infinity":
    cfg = testing.micro_infinity()
    params = transformer.init_params(cfg, jax.random.key(0))
    text = jax.random.normal(jax.random.key(1), (_B, 8, cfg.text_dim)) * 0.3
    mask = jnp.arange(8)[None] < jnp.array([[5], [8]])
    forced = rng.randint(0, 2, (_B, cfg.seq_len, cfg.latent_dim))
    return cfg, None, params, None, dict(text=text, text_mask=mask), forced
  cfg = testing.micro_var()
  params = transformer.init_params(cfg, jax.random.key(0))
  tok = config_lib.VQVAEConfig(
      ch=16, ch_mult=(1,), num_res_blocks=1, z_channels=cfg.latent_dim,
      vocab_size=cfg.vocab_size,
      patch_nums=tuple(h for h, _ in cfg.schedule))
  side = cfg.schedule[-1][0]
  qvars = vqvae.MultiScaleQuantizer(tok).init(
      jax.random.key(2), jnp.zeros((1, side, side, tok.z_channels)),
      method=vqvae.MultiScaleQuantizer.touch_all)
  vparams = {"params": {"quantize": qvars["params"]}}
  forced = rng.randint(0, cfg.vocab_size, (_B, cfg.seq_len))
  return cfg, tok, params, vparams, dict(labels=jnp.array([3, 7])), forced


def _var_inputs(cfg, tok, vparams, forced):
  """VAR next-scale inputs from the forced tokens, through the tokenizer."""
  acc = latents_lib.VARLatents(cfg, tok)
  f_hat, feats = acc.init(_B), {}
  off = cfg.scale_offsets
  for si in range(cfg.num_scales - 1):
    f_hat = acc.add(vparams, f_hat, jnp.asarray(forced[:, off[si]:off[si + 1]]),
                    si)
    feats[si + 1] = np.asarray(acc.next_input(vparams, f_hat, si + 1))
  return feats.__getitem__


def _scales(cfg, name, fn, exit_scale=None):
  """The dense plan with scale s replaced by fn(s, n_s, ScalePlan)."""
  plan = testing.with_scales(
      plan_lib.dense_plan(cfg), name,
      lambda s, sp: fn(s, cfg.tokens_per_scale[s], sp))
  if exit_scale is not None:
    plan = dataclasses.replace(plan, exit_scale=exit_scale,
                               scales=plan.scales[:exit_scale])
  return validation.validate_plan(plan, cfg)


def _probe_previous_x_drop(cfg):
  """Scale 2: probe at 0, "FSS"; scale 3: entropy of scale 2 area-resized,
  an X layer, the unconditional branch dropped."""
  return _scales(cfg, "probe_previous_x_drop", lambda s, n, sp: (
      dataclasses.replace(sp, layers="FSS", keep=n // 2 + 1, probe_layer=0,
                          scorer="entropy")
      if s == 2 else dataclasses.replace(
          sp, layers="FSX", keep=n * 2 // 3, probe_layer=0, scorer="entropy",
          entropy_from="previous", guidance=False)
      if s == 3 else sp))


def _per_row_then_frequency(cfg):
  """Scale 2: share_cfg off, every row (cond and uncond) scored on its own
  probe entropy; scale 3: FastVAR frequency, one kept set for the scale,
  shared, S before and after an F layer."""
  return _scales(cfg, "per_row_then_frequency", lambda s, n, sp: (
      dataclasses.replace(sp, layers="FSS", keep=n // 2 - 1, probe_layer=0,
                          scorer="entropy", share_cfg=False)
      if s == 2 else dataclasses.replace(
          sp, layers="SFS", keep=n // 2 + 1, scorer="frequency")
      if s == 3 else sp))


def _cached(cfg):
  """Cached restore from scale 1 (area-resized 2x2 -> 4x4, 6x6): scale 2
  with one kept set from the probe's entropy (shared); scale 3 FastVAR
  style, frequency re-chosen before every sub-layer, rows on their own."""
  return _scales(cfg, "cached", lambda s, n, sp: (
      dataclasses.replace(sp, layers="FSS", keep=n // 2 + 1, probe_layer=0,
                          scorer="entropy", restore="cached", cache_from=1)
      if s == 2 else dataclasses.replace(
          sp, layers="SSS", keep=n // 2 + 1, scorer="frequency",
          select="sublayer", share_cfg=False, restore="cached", cache_from=1)
      if s == 3 else sp))


def _exit(cfg):
  """exit_scale 3 after a frequency-pruned scale 2 (rows on their own): the
  latent after scale 2 is what is decoded."""
  return _scales(cfg, "exit", lambda s, n, sp: (
      dataclasses.replace(sp, layers="SSF", keep=n // 2 + 1,
                          scorer="frequency", share_cfg=False)
      if s == 2 else sp), exit_scale=3)


_PLANS = {"probe_previous_x_drop": _probe_previous_x_drop,
          "per_row_then_frequency": _per_row_then_frequency,
          "cached": _cached, "exit": _exit}
# Every plan on the Infinity-style model (RoPE, cross-attention, shared
# AdaLN); VAR-style (per-block AdaLN, absolute positions, the guidance
# ramp) on two that between them hold every scorer and restore.
_CASES = tuple((p, "infinity") for p in _PLANS) + (
    ("probe_previous_x_drop", "var"), ("cached", "var"))


def run_sampler(setup, plan, kv_read="slice"):
  """The sampler's Generation and every kept set it chose, in order."""
  cfg, tok, params, vparams, cond, forced = setup
  smp = sampler_lib.Sampler(
      model=cfg, tokenizer=tok, plan=plan,
      sampling=sampler_lib.SamplingConfig(top_k=1, return_logits=True),
      execution=sampler_lib.ExecutionConfig(kv_read=kv_read))
  kept, select = [], selection.select

  def spy(*args, **kwargs):
    idx = select(*args, **kwargs)
    jax.debug.callback(lambda i: kept.append(np.asarray(i)), idx,
                       ordered=True)
    return idx
  with mock.patch.object(selection, "select", spy):
    # A fresh jit: the spy must be traced in.
    out = jax.jit(smp._generate)(
        params, vparams, runner.image_keys(0, range(_B)), jnp.float32(2.5),
        jnp.float32(0.8), cond.get("labels"), cond.get("text"),
        cond.get("text_mask"), jnp.asarray(forced))
    jax.block_until_ready(out)
    jax.effects_barrier()
  return out, kept


def run_reference(setup, plan):
  cfg, tok, params, vparams, cond, forced = setup
  var_inputs = (_var_inputs(cfg, tok, vparams, forced)
                if cfg.style == "var" else None)
  return sparse_reference.generate(
      cfg, params, plan, forced=forced, cfg_scale=2.5, tau=0.8,
      labels=None if "labels" not in cond else np.asarray(cond["labels"]),
      text=None if "text" not in cond else np.asarray(cond["text"]),
      text_mask=None if "text_mask" not in cond else np.asarray(
          cond["text_mask"]),
      var_inputs=var_inputs)


def _assert_sorted(test, kept):
  for i, k in enumerate(kept):
    test.assertTrue(np.all(np.diff(k, axis=1) > 0),
                    f"kept set {i} is not sorted ascending: {k}")


class SparseReferenceTest(parameterized.TestCase):

  @parameterized.named_parameters(
      (f"{plan}_{style}", plan, style) for plan, style in _CASES)
  def test_pruned_plan_equals_the_reference(self, plan, style):
    setup = _setup(style)
    cfg = setup[0]
    p = _PLANS[plan](cfg)
    self.assertTrue(any(sp.keep < n and "S" in sp.layers for sp, n in
                        zip(p.scales, cfg.tokens_per_scale)))
    # Both cache reads: "buffer" writes the kept keys before attending.
    out, kept = run_sampler(
        setup, p, kv_read="buffer" if plan == "cached" else "slice")
    ref = run_reference(setup, p)
    self.assertGreater(min(ref["margins"]), _MIN_MARGIN)
    _assert_sorted(self, kept)
    self.assertLen(kept, len(ref["kept"]))
    for i, (got, want) in enumerate(zip(kept, ref["kept"])):
      np.testing.assert_array_equal(got, want, err_msg=f"kept set {i}")
    np.testing.assert_allclose(
        np.asarray(out.logits), np.concatenate(ref["logits"], axis=1),
        atol=_ATOL, rtol=0)
    if style == "infinity":
      np.testing.assert_allclose(np.asarray(out.latent), ref["latent"],
                                 atol=1e-6, rtol=0)


if __name__ == "__main__":
  absltest.main()
