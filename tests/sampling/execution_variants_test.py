"""Execution variants of the sampler give the same generation as the default.

  * kv_read="buffer" (write first, attend over the whole cache row with a
    static kv_len) vs the default "slice" (prefix slice + concatenation);
  * unroll_tokens (runs of layers unrolled in Python with per-layer weight
    copies and static cache indices) vs `lax.scan` over layers;
  * layer_loop="while" (the layer id is the loop counter) vs `lax.scan`;
  * the cuDNN code paths (emulated in XLA: cuDNN does not run on CPU) vs the
    XLA attention, padded text included (cross-attention takes the text as
    per-row lengths there).

All fp32 on CPU, greedy, on the micro configs of `toprovar_jax.testing`
(4 scales, 3 layers). What is pinned, per plan: tokens identical, guided
logits within 1e-5, recorded attention entropies within 1e-5 (NaN where a
layer records none). The plans cover dense, S layers (select "scale" with
passthrough restore, select "sublayer" with cached restore), an X layer, an
entropy probe and the SkipVAR branch drop.
"""

import dataclasses
import functools
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
from jax._src.cudnn import fused_attention_stablehlo
from jax._src.nn import functions as nn_functions
import jax.numpy as jnp
import numpy as np

from toprovar_jax import testing
from toprovar_jax.models import config as config_lib
from toprovar_jax.models import transformer
from toprovar_jax.models import vqvae
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import validation
from toprovar_jax.sampling import runner
from toprovar_jax.sampling import sampler as sampler_lib

_B = 2
_ATOL = 1e-5


@functools.lru_cache(maxsize=None)
def _micro_infinity():
  cfg = testing.micro_infinity()
  params = transformer.init_params(cfg, jax.random.key(0))
  text = jax.random.normal(jax.random.key(1), (_B, 8, cfg.text_dim)) * 0.3
  mask = jnp.arange(8)[None] < jnp.array([[5], [8]])
  return cfg, None, params, None, dict(text=text, text_mask=mask)


@functools.lru_cache(maxsize=None)
def _micro_var():
  """micro_var with a random codebook and φ convs (all its latents need)."""
  cfg = testing.micro_var()
  params = transformer.init_params(cfg, jax.random.key(0))
  side = cfg.schedule[-1][0]
  tok = config_lib.VQVAEConfig(
      ch=16, ch_mult=(1,), num_res_blocks=1, z_channels=cfg.latent_dim,
      vocab_size=cfg.vocab_size,
      patch_nums=tuple(h for h, _ in cfg.schedule))
  quant = vqvae.MultiScaleQuantizer(tok)
  qvars = quant.init(jax.random.key(2),
                     jnp.zeros((1, side, side, tok.z_channels)),
                     method=vqvae.MultiScaleQuantizer.touch_all)
  vparams = {"params": {"quantize": qvars["params"]}}
  labels = jnp.array([3, 7], jnp.int32)
  return cfg, tok, params, vparams, dict(labels=labels)


_EXECUTION_FIELDS = frozenset(
    f.name for f in dataclasses.fields(sampler_lib.ExecutionConfig))


def _sampler(cfg, tok, plan, **kw):
  """A Sampler; `kw` are SamplingConfig and ExecutionConfig fields."""
  execution = {k: v for k, v in kw.items() if k in _EXECUTION_FIELDS}
  rules = {k: v for k, v in kw.items() if k not in _EXECUTION_FIELDS}
  return sampler_lib.Sampler(
      model=cfg, tokenizer=tok, plan=plan,
      sampling=sampler_lib.SamplingConfig(**rules),
      execution=sampler_lib.ExecutionConfig(**execution))


def _generate(setup, plan=None, **sampling):
  cfg, tok, params, vparams, cond = setup
  smp = _sampler(cfg, tok, plan, top_k=1, return_logits=True, **sampling)
  g = 3.0 if cfg.style == "infinity" else 1.5
  return smp.generate(params, vparams, runner.image_keys(0, range(_B)),
                      jnp.float32(g), jnp.float32(1.0), **cond)


def _num_layer_loops(setup, plan=None, **sampling):
  """While loops in the lowered generation program (the layer scans)."""
  cfg, tok, params, vparams, cond = setup
  smp = _sampler(cfg, tok, plan, top_k=1, **sampling)
  text = type(smp).generate.lower(
      smp, params, vparams, runner.image_keys(0, range(_B)), jnp.float32(1.0),
      jnp.float32(1.0), **cond).as_text()
  return text.count("stablehlo.while")


def _probe_plan(cfg):
  """S (select "scale", passthrough) with a probe at scale 2; at scale 3
  an X layer, entropy from the previous scale and the branch drop; K = 7 and
  13 (multiples of nothing)."""
  return testing.probe_sx_plan(cfg, keep=(7, 13), name="probe_sx")


def _cached_plan(cfg):
  """S everywhere from scale 2 on: FastVAR select "sublayer", cached restore
  from scale 1, K not a multiple of anything."""
  def fn(s, sp):
    if s < 2:
      return sp
    return dataclasses.replace(
        sp, layers="S" * cfg.depth, keep=cfg.tokens_per_scale[s] // 2 + 1,
        scorer="frequency", select="sublayer", restore="cached",
        share_cfg=False, cache_from=1)
  return testing.with_scales(plan_lib.dense_plan(cfg), "cached_sublayer", fn)


def _x_plan(cfg):
  """X in layer 1 at every scale and in layer 2 at the last: a segment whose
  last scale writes nothing."""
  def fn(s, sp):
    return dataclasses.replace(sp, layers="FXX" if s == 3 else "FXF")
  return testing.with_scales(plan_lib.dense_plan(cfg), "x_layers", fn)


_PLANS = {"dense": lambda cfg: None, "probe_sx": _probe_plan,
          "cached_sublayer": _cached_plan, "x_layers": _x_plan}


def _setup_and_plan(style, plan_name):
  """The micro model of `style` and the validated plan (None = dense)."""
  setup = _micro_infinity() if style == "infinity" else _micro_var()
  plan = _PLANS[plan_name](setup[0])
  if plan is not None:
    plan = validation.validate_plan(plan, setup[0])
  return setup, plan


def _emulated_cudnn(query, key, value, bias=None, mask=None, q_seqlen=None,
                    kv_seqlen=None, *, scale=1.0, mask_type=None,
                    return_residual=False, **unused):
  """XLA stand-in for both cuDNN calls (the public one's kernel and the
  private one with the logsumexp): bool mask and padding lengths as cuDNN
  applies them, a large negative bias rather than −inf."""
  del bias, unused
  s = scale * jnp.einsum("bqhd,bkhd->bhqk", query.astype(jnp.float32),
                         key.astype(jnp.float32),
                         precision=jax.lax.Precision.HIGHEST)
  valid = jnp.ones(s.shape, bool)
  if mask is not None:
    valid &= mask
  if mask_type == fused_attention_stablehlo.MaskType.PADDING:
    valid &= (jnp.arange(s.shape[-1]) < kv_seqlen[:, None, None, None])
    valid &= (jnp.arange(s.shape[-2])[:, None] < q_seqlen[:, None, None, None])
  s = jnp.where(valid, s, -2.0 ** 41)
  out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, axis=-1),
                   value.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST).astype(query.dtype)
  return (out, jax.nn.logsumexp(s, axis=-1)) if return_residual else out


class ExecutionVariantsTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("infinity_dense_entropy", "infinity", "dense", True, None),
      ("var_dense", "var", "dense", False, None),
      ("infinity_probe_sx_entropy", "infinity", "probe_sx", True, None),
      # The FAE kernel (Pallas interpret mode) reads kv_len rows itself.
      ("infinity_probe_sx_pallas", "infinity", "probe_sx", True, "pallas"),
      ("infinity_cached_sublayer", "infinity", "cached_sublayer", False,
       None),
      ("infinity_x_layers", "infinity", "x_layers", False, None),
  )
  def test_buffer_equals_slice(self, style, plan_name, record_entropy,
                               entropy_impl):
    setup, plan = _setup_and_plan(style, plan_name)
    kw = dict(record_entropy=record_entropy, entropy_impl=entropy_impl)
    ref = _generate(setup, plan, **kw)
    out = _generate(setup, plan, kv_read="buffer", **kw)
    np.testing.assert_array_equal(np.asarray(out.tokens),
                                  np.asarray(ref.tokens))
    chex.assert_trees_all_close(out.logits, ref.logits, atol=_ATOL, rtol=0)
    chex.assert_trees_all_close(out.latent, ref.latent, atol=_ATOL, rtol=0)
    if record_entropy:
      self.assertLen(out.entropy, len(ref.entropy))
      for e_out, e_ref in zip(out.entropy, ref.entropy):
        # NaN (layers that record nothing) in the same places.
        np.testing.assert_array_equal(np.isnan(e_out), np.isnan(e_ref))
        chex.assert_trees_all_close(e_out, e_ref, atol=_ATOL, rtol=0)
      self.assertTrue(np.isfinite(np.asarray(out.entropy[0][0])).all())
    else:
      self.assertIsNone(out.entropy)

  def test_cudnn_route_traces_and_matches(self):
    # cuDNN does not run on CPU: both of its entry points are replaced by an
    # XLA emulation, so this checks the plumbing of the cuDNN code paths
    # (key_value_seq_lengths in the plain call, q/kv_seqlen + PADDING in the
    # [V | K] entropy call) through a whole sparse generation.
    setup = _micro_infinity()
    plan = validation.validate_plan(_probe_plan(setup[0]), setup[0])
    kw = dict(attn_impl="cudnn", entropy_impl="cudnn", record_entropy=True)
    with mock.patch.object(nn_functions, "cudnn_dot_product_attention",
                           _emulated_cudnn), \
         mock.patch.object(fused_attention_stablehlo, "dot_product_attention",
                           _emulated_cudnn):
      ref = _generate(setup, plan, **kw)
      out = _generate(setup, plan, kv_read="buffer", **kw)
    np.testing.assert_array_equal(np.asarray(out.tokens),
                                  np.asarray(ref.tokens))
    chex.assert_trees_all_close(out.logits, ref.logits, atol=_ATOL, rtol=0)
    # lse − s̄ cancels ~|s| in float32 (as in ops/attention_test.py).
    chex.assert_trees_all_close(out.entropy, ref.entropy, atol=1e-4, rtol=0)

  @parameterized.named_parameters(
      ("infinity_dense_entropy", "infinity", "dense", True, 4, "slice"),
      ("var_dense_all", "var", "dense", False, 10**6, "slice"),
      ("infinity_probe_sx_entropy", "infinity", "probe_sx", True, 7, "slice"),
      ("infinity_probe_sx_buffer", "infinity", "probe_sx", True, 7, "buffer"),
      ("infinity_cached_sublayer", "infinity", "cached_sublayer", False, 9,
       "slice"),
      ("infinity_x_layers_all", "infinity", "x_layers", False, 10**6,
       "slice"),
  )
  def test_unrolled_equals_scanned(self, style, plan_name, record_entropy,
                                   unroll_tokens, kv_read):
    # Thresholds that unroll some runs and scan others (micro schedule
    # 1, 4, 16, 36 tokens: 4 unrolls scales 0-1; 7 also scale 2's S run,
    # K = 7; 9 the sublayer S runs of scale 2, K = 9), or unroll everything.
    setup, plan = _setup_and_plan(style, plan_name)
    kw = dict(record_entropy=record_entropy, kv_read=kv_read)
    loops = _num_layer_loops(setup, plan, **kw)
    loops_unrolled = _num_layer_loops(setup, plan, unroll_tokens=unroll_tokens,
                                      **kw)
    if unroll_tokens == 10**6:
      self.assertEqual(loops_unrolled, 0)
    self.assertLess(loops_unrolled, loops)
    ref = _generate(setup, plan, **kw)
    out = _generate(setup, plan, unroll_tokens=unroll_tokens, **kw)
    np.testing.assert_array_equal(np.asarray(out.tokens),
                                  np.asarray(ref.tokens))
    chex.assert_trees_all_close(out.logits, ref.logits, atol=_ATOL, rtol=0)
    chex.assert_trees_all_close(out.latent, ref.latent, atol=_ATOL, rtol=0)
    if record_entropy:
      for e_out, e_ref in zip(out.entropy, ref.entropy):
        np.testing.assert_array_equal(np.isnan(e_out), np.isnan(e_ref))
        chex.assert_trees_all_close(e_out, e_ref, atol=_ATOL, rtol=0)

  @parameterized.named_parameters(
      ("infinity_dense_entropy", "infinity", "dense", True),
      ("var_dense", "var", "dense", False),
      ("infinity_probe_sx_entropy", "infinity", "probe_sx", True),
      ("infinity_cached_sublayer", "infinity", "cached_sublayer", False),
      ("infinity_x_layers", "infinity", "x_layers", False),
  )
  def test_while_layer_loop_equals_scan(self, style, plan_name,
                                        record_entropy):
    setup, plan = _setup_and_plan(style, plan_name)
    kw = dict(record_entropy=record_entropy)
    # A different program (the layer id is the while loop's counter) ...
    lowered = {}
    for loop in ("scan", "while"):
      c, tok, params, vparams, cond = setup
      smp = _sampler(c, tok, plan, top_k=1, layer_loop=loop, **kw)
      lowered[loop] = type(smp).generate.lower(
          smp, params, vparams, runner.image_keys(0, range(_B)),
          jnp.float32(1.0), jnp.float32(1.0), **cond).as_text()
    self.assertNotEqual(lowered["scan"], lowered["while"])
    # ... with the same numbers.
    ref = _generate(setup, plan, **kw)
    out = _generate(setup, plan, layer_loop="while", **kw)
    np.testing.assert_array_equal(np.asarray(out.tokens),
                                  np.asarray(ref.tokens))
    chex.assert_trees_all_close(out.logits, ref.logits, atol=_ATOL, rtol=0)
    if record_entropy:
      for e_out, e_ref in zip(out.entropy, ref.entropy):
        np.testing.assert_array_equal(np.isnan(e_out), np.isnan(e_ref))
        chex.assert_trees_all_close(e_out, e_ref, atol=_ATOL, rtol=0)

  def test_cudnn_route_equals_xla_with_padded_text(self):
    # Row 0 of the micro text has 5 of 8 tokens: cuDNN gets it as a length
    # (key_value_seq_lengths), XLA as a key mask.
    setup = _micro_infinity()
    plan = validation.validate_plan(_probe_plan(setup[0]), setup[0])
    ref = _generate(setup, plan, attn_impl="xla", record_entropy=True)
    with mock.patch.object(nn_functions, "cudnn_dot_product_attention",
                           _emulated_cudnn), \
         mock.patch.object(fused_attention_stablehlo, "dot_product_attention",
                           _emulated_cudnn):
      out = _generate(setup, plan, attn_impl="cudnn", entropy_impl="cudnn",
                      record_entropy=True)
    np.testing.assert_array_equal(np.asarray(out.tokens),
                                  np.asarray(ref.tokens))
    chex.assert_trees_all_close(out.logits, ref.logits, atol=1e-4, rtol=0)
    chex.assert_trees_all_close(out.entropy, ref.entropy, atol=1e-4, rtol=0)

  def test_unknown_layer_loop_raises(self):
    with self.assertRaisesRegex(ValueError, "layer_loop"):
      sampler_lib.ExecutionConfig(layer_loop="fori")

  def test_negative_unroll_tokens_raises(self):
    with self.assertRaisesRegex(ValueError, "unroll_tokens"):
      sampler_lib.ExecutionConfig(unroll_tokens=-1)

  def test_unknown_kv_read_raises(self):
    with self.assertRaisesRegex(ValueError, "kv_read"):
      sampler_lib.ExecutionConfig(kv_read="concat")


if __name__ == "__main__":
  absltest.main()
