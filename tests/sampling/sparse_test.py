"""Sparse plan execution: the SPEC §3 equalities and a NumPy re-implementation.

All fp32 on CPU, on micro configs (4 scales, 3 layers) that compile fast.
"""

import dataclasses
import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax import testing
from toprovar_jax.models import layers
from toprovar_jax.models import transformer
from toprovar_jax.sampling import latents
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import validation
from toprovar_jax.sampling import runner
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.sparsity import selection

_B = 2


@functools.lru_cache(maxsize=None)
def _micro():
  cfg = testing.micro_infinity()
  params = transformer.init_params(cfg, jax.random.key(0))
  text = jax.random.normal(jax.random.key(1), (_B, 8, cfg.text_dim)) * 0.3
  mask = jnp.arange(8)[None] < jnp.array([[5], [8]])
  return cfg, params, dict(text=text, text_mask=mask)


def _sampler(cfg, plan=None, **kw):
  return sampler_lib.Sampler(
      model=cfg, tokenizer=None, plan=plan,
      sampling=sampler_lib.SamplingConfig(top_k=1, return_logits=True, **kw))


def _run(cfg, params, cond, plan=None, **kw):
  """Greedy generation at cfg 3, τ 1, seed 0 (the fixed setting of these tests)."""
  return _sampler(cfg, plan, **kw).generate(
      params, None, runner.image_keys(0, range(_B)), jnp.float32(3.0),
      jnp.float32(1.0),
      **cond)


@functools.lru_cache(maxsize=None)
def _dense_out():
  return _run(*_micro())


def _all_sparse(cfg, scorer, select, restore, keep_frac=1.0):
  """S in every layer from scale 2 on (scales 0, 1 dense; 1 is the cache)."""
  dense = plan_lib.dense_plan(cfg)

  def fn(s, sp):
    if s < 2:
      return sp
    n = cfg.tokens_per_scale[s]
    return dataclasses.replace(
        sp, layers="S" * cfg.depth, keep=max(1, int(n * keep_frac)),
        scorer=scorer, select=select, restore=restore,
        share_cfg=scorer != "frequency",
        cache_from=1 if restore == "cached" else None)
  return testing.with_scales(dense, f"all_s_{scorer}_{select}_{restore}", fn)


class EqualitiesTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("gather_once", "none", "scale", "passthrough"),
      ("sublayer_frequency", "frequency", "sublayer", "passthrough"),
      ("sublayer_cached", "frequency", "sublayer", "cached"))
  def test_all_sparse_keeping_everything_equals_dense(self, scorer, select,
                                                      restore):
    cfg, params, cond = _micro()
    plan = validation.validate_plan(_all_sparse(cfg, scorer, select, restore),
                                  cfg)
    out = _run(cfg, params, cond, plan)
    ref = _dense_out()
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
    chex.assert_trees_all_close(out.logits, ref.logits, atol=1e-5, rtol=0)

  def test_x_layer_equals_deleting_the_block(self):
    cfg, params, cond = _micro()
    dense = plan_lib.dense_plan(cfg)
    plan = testing.with_scales(dense, "x1", lambda s, sp: dataclasses.replace(
        sp, layers="FXF"))
    out = _run(cfg, params, cond, plan)
    # The same model with block 1 removed.
    cfg2 = dataclasses.replace(cfg, depth=2)
    keep = jnp.array([0, 2])
    params2 = {"stem": params["stem"],
               "blocks": jax.tree.map(lambda t: t[keep], params["blocks"])}
    ref = _run(cfg2, params2, cond)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
    chex.assert_trees_all_close(out.logits, ref.logits, atol=1e-6, rtol=0)

  def test_x_layer_at_one_scale_changes_only_that_scale_onwards(self):
    cfg, params, cond = _micro()
    dense = plan_lib.dense_plan(cfg)
    plan = testing.with_scales(
        dense, "x_at_2", lambda s, sp: dataclasses.replace(
            sp, layers="FXF" if s == 2 else sp.layers))
    out = _run(cfg, params, cond, plan)
    ref = _dense_out()
    a = cfg.scale_offsets[2]
    np.testing.assert_array_equal(np.asarray(out.logits[:, :a]),
                                  np.asarray(ref.logits[:, :a]))
    self.assertGreater(float(jnp.abs(out.logits[:, a:] - ref.logits[:, a:]).max()),
                       1e-3)

  def test_exit_scale_decodes_the_latent_after_the_previous_scale(self):
    cfg, params, cond = _micro()
    plan = dataclasses.replace(plan_lib.dense_plan(cfg), name="exit3",
                               exit_scale=3)
    plan = dataclasses.replace(plan, scales=plan.scales[:3])
    out = _run(cfg, params, cond, plan)
    ref = _dense_out()
    e = cfg.scale_offsets[3]
    self.assertEqual(out.tokens.shape[1], e)
    np.testing.assert_array_equal(np.asarray(out.tokens),
                                  np.asarray(ref.tokens[:, :e]))
    acc = latents.InfinityLatents(cfg)
    z = acc.init(_B)
    for si in range(3):
      a, b = cfg.scale_offsets[si], cfg.scale_offsets[si + 1]
      z = acc.add(None, z, ref.tokens[:, a:b], si)
    chex.assert_trees_all_close(out.latent, z, atol=1e-6, rtol=0)


class PrunedPlanTest(absltest.TestCase):

  def test_no_retrace_across_seeds_and_prompts(self):
    cfg, params, cond = _micro()
    plan = validation.validate_plan(testing.probe_sx_plan(cfg), cfg)
    smp = sampler_lib.Sampler(
        model=cfg, tokenizer=None, plan=plan,
        sampling=sampler_lib.SamplingConfig(top_k=0, top_p=0.9))
    fn = jax.jit(chex.assert_max_traces(smp._generate, n=1))
    outs = []
    for seed, g in ((0, 3.0), (1, 4.5)):
      text = cond["text"] * (1.0 + seed)
      out = fn(params, None, runner.image_keys(seed, range(_B)), jnp.float32(g),
               jnp.float32(0.5), None, text, cond["text_mask"], None)
      outs.append(np.asarray(out.tokens))
    self.assertEqual(outs[0].shape, (_B, cfg.seq_len, cfg.latent_dim))
    self.assertFalse(np.array_equal(outs[0], outs[1]))

  def test_a_new_plan_compiles_once(self):
    cfg, params, cond = _micro()
    gen = sampler_lib.Sampler.generate
    before = gen._cache_size()
    p2 = lambda: validation.validate_plan(
        testing.probe_sx_plan(cfg, name="p2"), cfg)
    smp = _sampler(cfg, p2())
    for seed in (0, 1, 2):
      smp.generate(params, None, runner.image_keys(seed, range(_B)),
                   jnp.float32(3.0),
                   jnp.float32(1.0), **cond)
    self.assertEqual(gen._cache_size(), before + 1)
    # An equal plan built separately is the same static argument.
    smp2 = _sampler(cfg, p2())
    smp2.generate(params, None, runner.image_keys(5, range(_B)),
                  jnp.float32(3.0),
                  jnp.float32(1.0), **cond)
    self.assertEqual(gen._cache_size(), before + 1)

  def test_entropy_probe_keeps_the_lowest_entropy_tokens(self):
    cfg, params, cond = _micro()
    # Record every layer's entropy on the dense run: the probe's map decides
    # the kept set of scale 2 in the pruned plan.
    out = _run(cfg, params, cond, record_entropy=True)
    ent = np.asarray(out.entropy[2][0])  # layer 0, (B, 16)
    self.assertTrue(np.all(np.isfinite(ent)))
    self.assertTrue(np.all(ent > 0))
    idx = np.asarray(selection.select(jnp.asarray(-ent), 8, share_cfg=True,
                                      batch=_B))
    want = np.sort(np.argsort(ent[0], kind="stable")[:8])
    np.testing.assert_array_equal(idx[0], want)
    np.testing.assert_array_equal(idx[1], np.sort(np.argsort(ent[1])[:8]))


# -- NumPy re-implementation of one S layer (select "sublayer", cached) --------


def _np_layer_norm(x, eps=1e-6):
  m = x.mean(-1, keepdims=True)
  return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + eps)


def _np_attend(q, k, v, scale=1.0, key_mask=None):
  s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
  if key_mask is not None:
    s = np.where(key_mask[:, None, None, :], s, -np.inf)
  s = s - s.max(-1, keepdims=True)
  p = np.exp(s)
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", p, v)


def _np_rope(x, cos, sin):
  x0, x1 = x[..., 0::2], x[..., 1::2]
  c, s = cos[:, :, None, :], sin[:, :, None, :]
  out = np.empty_like(x)
  out[..., 0::2] = x0 * c - x1 * s
  out[..., 1::2] = x0 * s + x1 * c
  return out


def _np_sparse_layer(p, cfg, x, gss, prefix, text_kv, text_mask, cos, sin,
                     cached, keep, share_cfg, batch):
  """Direct NumPy form of SPEC §3 for one S layer."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  x = np.asarray(x, np.float64)
  h_, d_ = cfg.num_heads, cfg.head_dim
  mod = np.asarray(gss, np.float64) + p["ada_gss"]
  g1, g2, s1, s2, b1, b2 = (mod[:, i, None, :] for i in range(6))
  rows = np.arange(x.shape[0])[:, None]

  def pick(x):
    sc = ((x - x.mean(1, keepdims=True)) ** 2).sum(-1)
    idx = np.sort(np.argsort(-sc, axis=1, kind="stable")[:, :keep], axis=1)
    if share_cfg:
      idx = np.concatenate([idx[:batch], idx[:batch]])
    return idx

  def restore(x, i, out, j):
    full = np.array(cached[j], np.float64)
    full[rows, i] = out
    return x + full

  i = pick(x)
  hk = _np_layer_norm(x[rows, i]) * (1 + s1) + b1
  sa = p["sa"]
  qkv = hk @ sa["mat_qkv"]["kernel"] + np.concatenate(
      [sa["q_bias"], np.zeros_like(sa["q_bias"]), sa["v_bias"]])
  q, k, v = (qkv[..., j * cfg.width:(j + 1) * cfg.width].reshape(
      *hk.shape[:2], h_, d_) for j in range(3))
  q = q / np.linalg.norm(q, axis=-1, keepdims=True) * np.exp(
      np.minimum(sa["scale_mul"], np.log(100.0)))[:, None]
  k = k / np.linalg.norm(k, axis=-1, keepdims=True)
  q, k = _np_rope(q, cos[i], sin[i]), _np_rope(k, cos[i], sin[i])
  k_all = np.concatenate([np.asarray(prefix[0], np.float64), k], 1)
  v_all = np.concatenate([np.asarray(prefix[1], np.float64), v], 1)
  o = _np_attend(q, k_all, v_all).reshape(*hk.shape[:2], -1)
  x = restore(x, i, (o @ sa["proj"]["kernel"] + sa["proj"]["bias"]) * g1, 0)

  i = pick(x)
  ca = p["ca"]
  nk = x[rows, i]
  m = nk.mean(-1, keepdims=True)
  nk = (nk - m) / np.sqrt(((nk - m) ** 2).mean(-1, keepdims=True) + 1e-6)
  nk = nk * p["ca_norm"]["scale"] + p["ca_norm"]["bias"]
  qc = (nk @ ca["mat_q"]["kernel"] + ca["mat_q"]["bias"]).reshape(
      *nk.shape[:2], h_, d_)
  oc = _np_attend(qc, np.asarray(text_kv[0], np.float64),
                  np.asarray(text_kv[1], np.float64), 1 / np.sqrt(d_),
                  np.asarray(text_mask)).reshape(*nk.shape[:2], -1)
  x = restore(x, i, oc @ ca["proj"]["kernel"] + ca["proj"]["bias"], 1)

  i = pick(x)
  hk = _np_layer_norm(x[rows, i]) * (1 + s2) + b2
  f = p["ffn"]
  a = hk @ f["fc1"]["kernel"] + f["fc1"]["bias"]
  a = 0.5 * a * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a ** 3)))
  x = restore(x, i, (a @ f["fc2"]["kernel"] + f["fc2"]["bias"]) * g2, 2)
  return x, k, v


class SparseLayerNumpyTest(parameterized.TestCase):

  @parameterized.named_parameters(("shared", True), ("per_row", False))
  def test_sublayer_select_with_cached_restore(self, share_cfg):
    cfg, params, _ = _micro()
    p = jax.tree.map(lambda t: t[1], params["blocks"])
    keys = jax.random.split(jax.random.key(7), 8)
    rows, n, pre, t, c = 2 * _B, 36, 21, 8, cfg.width
    x = jax.random.normal(keys[0], (rows, n, c))
    gss = jax.random.normal(keys[1], (rows, 6, c)) * 0.2
    hd = (rows, pre, cfg.num_heads, cfg.head_dim)
    prefix = (jax.random.normal(keys[2], hd), jax.random.normal(keys[3], hd))
    text_kv = tuple(jax.random.normal(k, (rows, t, cfg.num_heads, cfg.head_dim))
                    for k in keys[4:6])
    text_mask = jnp.arange(t)[None] < jnp.array([[3], [8], [3], [8]])
    cached = tuple(jax.random.normal(k, (rows, n, c)) * 0.1
                   for k in jax.random.split(keys[6], 3))
    cos, sin = layers.rope_tables(layers.rope_positions(cfg), cfg.head_dim)
    a = cfg.scale_offsets[3]
    cos, sin = cos[a:a + n], sin[a:a + n]
    keep = 20
    select_fn = lambda x: selection.select(selection.frequency_scores(x), keep,
                                           share_cfg=share_cfg, batch=_B)
    block = transformer.block_module(cfg)
    out, (k, v) = block.apply(
        {"params": p}, x, gss, idx=None, select_fn=select_fn,
        rope=(jnp.asarray(cos), jnp.asarray(sin)), kv_prefix=prefix,
        text_kv=text_kv, text_mask=text_mask, cached=cached,
        method=layers.Block.sparse)
    ref, k_ref, v_ref = _np_sparse_layer(
        p, cfg, x, gss, prefix, text_kv, text_mask, cos, sin, cached, keep,
        share_cfg, _B)
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(k), k_ref, atol=2e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(v), v_ref, atol=2e-5, rtol=0)


if __name__ == "__main__":
  absltest.main()
