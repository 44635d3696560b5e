"""Training step of the Infinity-style transformer on a micro config (CPU).

Random-init micro transformer (`testing.micro_infinity`: 4 scales 1/2/4/6,
d = 4 bits) and a random-init BSQ encoder with codebook_dim 4 at stride 2, so
the images are 12x12.
"""

import functools
import math

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from toprovar_jax import testing
from toprovar_jax.models import bsq_vae
from toprovar_jax.models import config as config_lib
from toprovar_jax.models import transformer
from toprovar_jax.ops import resample
from toprovar_jax.sampling import latents as latents_lib
from toprovar_jax.sampling import runner
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.training import transformer as train_lib

_MODEL = testing.micro_infinity()
# 2x2 patchify variant: 16 bits a token = 4 code bits x 2x2 latent pixels.
_MODEL_PATCHIFY = config_lib.replace(_MODEL, patchify=True, latent_dim=16)
_TOK = config_lib.BSQConfig(base_ch=32, ch_mult=(1, 2), num_res_blocks=1,
                            codebook_dim=4)
_B = 4
_T = 6
_TEXT_LENS = (6, 3, 5, 1)
_TF_TOL = 1e-5
# These tests are compile-bound on CPU (the train step compiles for ~30 s at
# the default level); level 0 cuts compile time ~3x, and fp32 numerics stay
# within the tolerances used here.
_FAST_COMPILE = {"xla_backend_optimization_level": 0,
                 "xla_llvm_disable_expensive_passes": True}
_jit = functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
_TX = optax.adam(3e-3)


def _image_size(model):
  hf, wf = config_lib.vae_grid(model)
  return hf * _TOK.stride, wf * _TOK.stride


@functools.cache
def _tok_params():
  """Random encoder variables (`make_inputs` never decodes).

  Filled with numpy from the abstract tree (LeCun-normal kernels, unit norm
  scales, zero biases): compiling the linen init would cost seconds.
  """
  abstract = jax.eval_shape(lambda k: bsq_vae.BSQVAE(_TOK).init(
      k, jnp.zeros((1, 4, 4, 3)), method=bsq_vae.BSQVAE.encode_h),
                            jax.random.key(1))
  rs = np.random.RandomState(1)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rs.normal(size=leaf.shape) / np.sqrt(fan_in),
                         jnp.float32)
    return jnp.full(leaf.shape, 1.0 if name == "scale" else 0.0,
                    jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, abstract)


@functools.cache
def _images(model=_MODEL):
  return jax.random.uniform(jax.random.key(2), (_B, *_image_size(model), 3),
                            minval=-1.0, maxval=1.0)


@functools.cache
def _text(seed=3):
  text = jax.random.normal(jax.random.key(seed), (_B, _T, _MODEL.text_dim))
  mask = np.arange(_T)[None, :] < np.asarray(_TEXT_LENS)[:, None]
  return text * mask[..., None], jnp.asarray(mask)


@functools.cache
def _state():
  # Jitted: eager linen init compiles every small op on its own.
  return _jit(functools.partial(train_lib.init_state, _MODEL, tx=_TX))(
      jax.random.key(4))


def _params():
  return _state().params


_jit_encode_h = _jit(functools.partial(bsq_vae.BSQVAE(_TOK).apply,
                                       method=bsq_vae.BSQVAE.encode_h))
_jit_make_inputs = _jit(
    functools.partial(train_lib.make_inputs, tok_cfg=_TOK),
    static_argnames=("model_cfg", "bsc"))


def _encode_h(images):
  return _jit_encode_h(_tok_params(), images)


def _make_inputs(images, rng, *, model, bsc):
  return _jit_make_inputs(_tok_params(), images, model_cfg=model, rng=rng,
                          bsc=bsc)


@functools.partial(_jit, static_argnames=("dtype",))
def _forward(params, inputs, gt_bits, text, mask, rng, cond_drop,
             dtype="float32"):
  """(logits of model_logits, loss_fn's loss and metrics); one compile for
  every cond_drop, which is traced."""
  kw = dict(model_cfg=_MODEL, rng=rng, cond_drop=cond_drop, dtype=dtype)
  logits = train_lib.model_logits(params, inputs, text, mask, **kw)
  loss, metrics = train_lib.loss_fn(params, inputs, gt_bits, text, mask, **kw)
  return logits, loss, metrics


def _loss(params, inputs, gt_bits, text, mask, rng, cond_drop,
          dtype="float32"):
  _, loss, metrics = _forward(params, inputs, gt_bits, text, mask, rng,
                              jnp.float32(cond_drop), dtype)
  return loss, metrics


_bit_loss = _jit(functools.partial(train_lib.bit_loss, model_cfg=_MODEL))


@functools.partial(_jit, static_argnums=0)
def _sampler_inputs(model, gt_bits):
  """Next-scale inputs the sampler builds when it chooses `gt_bits`."""
  acc = latents_lib.InfinityLatents(model)
  off = model.scale_offsets
  latent = acc.init(gt_bits.shape[0])
  out = []
  for si in range(model.num_scales):
    latent = acc.add(None, latent, gt_bits[:, off[si]:off[si + 1]], si)
    if si < model.num_scales - 1:
      out.append(acc.next_input(None, latent, si + 1))
  return jnp.concatenate(out, axis=1)


def _tokens_of(model, per_scale):
  """(B, h', w', d') VAE-grid maps -> (B, L, d) tokens."""
  out = []
  for x in per_scale:
    if model.patchify:
      x = resample.pixel_unshuffle(x, 2)
    out.append(x.reshape(x.shape[0], -1, model.latent_dim))
  return jnp.concatenate(out, axis=1)


class MakeInputsTest(parameterized.TestCase):

  @parameterized.named_parameters(("plain", _MODEL),
                                  ("patchify", _MODEL_PATCHIFY))
  def test_inputs_are_the_samplers_and_labels_the_quantisers(self, model):
    images = _images(model)
    gt_bits, inputs = _make_inputs(images, None, model=model, bsc=0.0)
    chex.assert_shape(gt_bits, (_B, model.seq_len, model.latent_dim))
    chex.assert_shape(inputs, (_B, model.seq_len - 1, model.latent_dim))
    self.assertEqual(gt_bits.dtype, jnp.uint8)
    # (1) Teacher-forcing inputs == the sampler's inputs for these choices.
    np.testing.assert_allclose(inputs, _sampler_inputs(model, gt_bits),
                               atol=1e-6, rtol=0)
    # Labels == the tokenizer's own multi-scale quantisation, and inputs ==
    # its independent teacher-forcing accumulation (bsq_vae.accumulate_bits).
    sched = tuple(config_lib.vae_grid(model, s)
                  for s in range(model.num_scales))
    bits, _ = _jit(bsq_vae.multiscale_quantize, static_argnums=1)(
        _encode_h(images), sched)
    np.testing.assert_array_equal(gt_bits, _tokens_of(model, bits))
    if not model.patchify:  # (the sampler check above covers patchify)
      _, acc_inputs = _jit(bsq_vae.accumulate_bits, static_argnums=1)(
          bits, sched)
      np.testing.assert_allclose(inputs, _tokens_of(model, acc_inputs),
                                 atol=1e-6, rtol=0)

  def test_bsc_changes_later_labels_only(self):
    images = _images()
    gt0, in0 = _make_inputs(images, None, model=_MODEL, bsc=0.0)
    rng = jax.random.key(5)
    gt1, in1 = _make_inputs(images, rng, model=_MODEL, bsc=0.5)
    n0 = _MODEL.tokens_per_scale[0]
    # (5) Scale 0 is quantised from h itself: same labels.
    np.testing.assert_array_equal(gt1[:, :n0], gt0[:, :n0])
    changed = np.mean(np.asarray(gt1[:, n0:] != gt0[:, n0:]))
    self.assertGreater(changed, 0.05)
    self.assertFalse(np.allclose(in1, in0))
    # Deterministic in rng.
    gt1b, in1b = _make_inputs(images, rng, model=_MODEL, bsc=0.5)
    np.testing.assert_array_equal(gt1b, gt1)
    np.testing.assert_array_equal(in1b, in1)
    # The 1x1 scale's chosen (possibly flipped) bits are readable from the
    # scale-1 input: bilinear-up of a 1x1 map is constant, so every scale-1
    # input token is the chosen scale-0 code (2b - 1)/sqrt(d).
    chosen0 = (np.asarray(in1[:, 0]) > 0).astype(np.uint8)  # (B, d)
    self.assertTrue(np.any(chosen0 != np.asarray(gt1[:, 0])))
    # flip_requant: scale-1 labels come from the residual h - codes(chosen).
    h = _encode_h(images)
    codes0 = bsq_vae.bits_to_codes(jnp.asarray(chosen0))[:, None, None, :]
    _, want = bsq_vae.quantize(
        resample.area_resize(h - codes0, _MODEL.schedule[1]))
    n1 = _MODEL.tokens_per_scale[1]
    np.testing.assert_array_equal(
        gt1[:, n0:n0 + n1], np.asarray(want).reshape(_B, n1, -1))

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, "needs an rng"):
      train_lib.make_inputs(_tok_params(), _images(), tok_cfg=_TOK,
                            model_cfg=_MODEL, bsc=0.1)
    with self.assertRaisesRegex(ValueError, "spatial size"):
      train_lib.make_inputs(_tok_params(), jnp.zeros((1, 16, 16, 3)),
                            tok_cfg=_TOK, model_cfg=_MODEL)


class LossTest(absltest.TestCase):

  def test_teacher_forced_equals_forced_sampler(self):
    gt_bits, inputs = _make_inputs(_images(), None, model=_MODEL, bsc=0.0)
    text, mask = _text()
    smp = sampler_lib.Sampler(
        model=_MODEL, tokenizer=_TOK,
        sampling=sampler_lib.SamplingConfig(top_k=1, return_logits=True))
    # cfg 1, tau 1: the guided logits are the conditional rows. (`generate`
    # is `_generate` under the default jit.)
    out = _jit(smp._generate)(_params(), None, runner.image_keys(0, range(_B)),
                              jnp.float32(1.0), jnp.float32(1.0), None, text,
                              mask, gt_bits)
    np.testing.assert_array_equal(out.tokens, gt_bits)
    logits, loss, _ = _forward(_params(), inputs, gt_bits, text, mask,
                               jax.random.key(0), jnp.float32(0.0))
    # (2) The loss's forward == the KV-cached sampler fed the same bits.
    err = float(jnp.max(jnp.abs(out.logits - logits)))
    self.assertLessEqual(err, _TF_TOL)
    want, _ = _bit_loss(out.logits, gt_bits)
    np.testing.assert_allclose(loss, want, rtol=1e-6)

  def test_full_cond_drop_ignores_text(self):
    gt_bits, inputs = _make_inputs(_images(), None, model=_MODEL, bsc=0.0)
    text_a, mask = _text(3)
    text_b, _ = _text(7)
    rng = jax.random.key(6)
    # (4) Every sample's text becomes cfg_uncond[:T]: text does not matter.
    la, _ = _loss(_params(), inputs, gt_bits, text_a, mask, rng, 1.0)
    lb, _ = _loss(_params(), inputs, gt_bits, text_b, mask, rng, 1.0)
    np.testing.assert_array_equal(la, lb)
    # ... and it is the unconditional branch of the sampler.
    unc = _jit(functools.partial(
        transformer.stem_module(_MODEL).apply,
        method=transformer.Stem.uncond_text))({"params": _params()["stem"]},
                                               mask)
    lu, _ = _loss(_params(), inputs, gt_bits, unc, mask, rng, 0.0)
    np.testing.assert_allclose(la, lu, rtol=1e-6)
    # Without dropout the text matters.
    la0, _ = _loss(_params(), inputs, gt_bits, text_a, mask, rng, 0.0)
    lb0, _ = _loss(_params(), inputs, gt_bits, text_b, mask, rng, 0.0)
    self.assertGreater(abs(float(la0) - float(lb0)), 1e-6)

  def test_scale_weights(self):
    for model in (_MODEL, config_lib.get_variant("emoji")):
      w = train_lib.scale_weights(model)
      self.assertEqual(w.shape, (model.seq_len,))
      # (6) Normalised, and each token weighs ∝ 1/sqrt(h*w) of its scale.
      np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
      sqrt_area = np.concatenate([np.full(h * ww, math.sqrt(h * ww))
                                  for h, ww in model.schedule])
      np.testing.assert_allclose(w * sqrt_area, w[0], rtol=1e-6)
    # The emoji schedule: a 1x1 token weighs 32x a 32x32 one.
    w = train_lib.scale_weights(config_lib.get_variant("emoji"))
    np.testing.assert_allclose(w[0] / w[-1], 32.0, rtol=1e-6)

  def test_bit_loss_golden(self):
    d, seq = _MODEL.latent_dim, _MODEL.seq_len
    gt = np.random.RandomState(8).randint(0, 2, (2, seq, d)).astype(np.uint8)
    # Zero logits: every bit costs ln 2, accuracy 0 for 1-labels (ties -> 0).
    loss, m = _bit_loss(np.zeros((2, seq, 2 * d), np.float32), gt)
    np.testing.assert_allclose(loss, math.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(m["bit_acc"], 1.0 - np.mean(gt),
                               rtol=1e-6)
    # Confident and right everywhere except zero logits on the last scale:
    # loss = ln 2 x (total weight of the last scale).
    onehot = np.eye(2, dtype=np.float32)[gt] * 50.0
    last = _MODEL.scale_offsets[-2]
    onehot[:, last:] = 0.0
    loss, m = _bit_loss(onehot.reshape(2, seq, 2 * d), gt)
    w = train_lib.scale_weights(_MODEL)
    np.testing.assert_allclose(loss, math.log(2.0) * w[last:].sum(),
                               rtol=1e-5)
    np.testing.assert_allclose(m["loss_last"], math.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(m["bit_acc"] * seq - last,
                               m["bit_acc_last"] * (seq - last), rtol=1e-5)

  def test_bfloat16_compute_is_close(self):
    gt_bits, inputs = _make_inputs(_images(), None, model=_MODEL, bsc=0.0)
    text, mask = _text()
    rng = jax.random.key(0)
    l32, _ = _loss(_params(), inputs, gt_bits, text, mask, rng, 0.0)
    l16, m16 = _loss(_params(), inputs, gt_bits, text, mask, rng, 0.0,
                     "bfloat16")
    chex.assert_tree_all_finite(m16)
    np.testing.assert_allclose(l16, l32, atol=2e-2)


  def test_remat_gives_the_same_loss_and_gradient(self):
    gt_bits, inputs = _make_inputs(_images(), None, model=_MODEL, bsc=0.0)
    text, mask = _text()

    @functools.partial(_jit, static_argnames=("remat",))
    def grad(params, remat):
      return jax.value_and_grad(train_lib.loss_fn, has_aux=True)(
          params, inputs, gt_bits, text, mask, model_cfg=_MODEL,
          rng=jax.random.key(0), cond_drop=0.0, remat=remat)

    (l0, _), g0 = grad(_params(), remat=False)
    (l1, _), g1 = grad(_params(), remat=True)
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    chex.assert_trees_all_close(g1, g0, rtol=1e-4, atol=1e-7)


class TrainStepTest(absltest.TestCase):

  def test_loss_decreases_without_retracing(self):
    state = _state()
    text, mask = _text()
    batch = dict(images=_images(), text=text, text_mask=mask)
    gt_bits, inputs = _make_inputs(_images(), None, model=_MODEL, bsc=0.0)
    rng = jax.random.key(9)
    before, _ = _loss(state.params, inputs, gt_bits, text, mask, rng, 0.0)
    # Keyword configs static; tx is a hashable NamedTuple of functions.
    step = _jit(chex.assert_max_traces(train_lib.train_step, n=1),
                static_argnames=("model_cfg", "tok_cfg", "tx", "cond_drop",
                                 "bsc", "dtype"))
    losses = []
    for _ in range(30):
      # The default text dropout, and a little Bitwise Self-Correction.
      state, metrics = step(state, _tok_params(), batch, rng,
                            model_cfg=_MODEL, tok_cfg=_TOK, tx=_TX,
                            cond_drop=0.1, bsc=0.1)
      losses.append(float(metrics["loss"]))
    chex.assert_tree_all_finite(metrics)
    self.assertEqual(int(state.step), 30)
    self.assertEqual(set(metrics), {"loss", "loss_last", "bit_acc",
                                    "bit_acc_last", "grad_norm"})
    # (3) The fixed batch is being fit: the training loss (noisy: dropout and
    # flips) and the clean teacher-forced loss both fall.
    self.assertLess(np.mean(losses[-3:]), 0.8 * losses[0])
    after, _ = _loss(state.params, inputs, gt_bits, text, mask, rng, 0.0)
    self.assertLess(float(after), 0.8 * float(before))

  def test_emoji_step_traces(self):
    """The real emoji configs trace through one step (no compile)."""
    model = config_lib.get_variant("emoji")
    tok = config_lib.get_tokenizer("emoji")
    key = jax.random.key(0)
    tok_params = jax.eval_shape(lambda k: bsq_vae.BSQVAE(tok).init(
        k, jnp.zeros((1, 8, 8, 3)), method=bsq_vae.BSQVAE.encode_h), key)
    state = jax.eval_shape(
        functools.partial(train_lib.init_state, model, tx=_TX), key)
    b, t = 2, model.text_maxlen
    batch = dict(images=jax.ShapeDtypeStruct((b, 128, 128, 3), jnp.float32),
                 text=jax.ShapeDtypeStruct((b, t, model.text_dim),
                                           jnp.float32),
                 text_mask=jax.ShapeDtypeStruct((b, t), jnp.bool_))
    gt_bits, inputs = jax.eval_shape(functools.partial(
        train_lib.make_inputs, tok_cfg=tok, model_cfg=model, bsc=0.3),
                                     tok_params, batch["images"], rng=key)
    self.assertEqual(gt_bits.shape, (b, 2304, 16))
    self.assertEqual(inputs.shape, (b, 2303, 16))
    new_state, metrics = jax.eval_shape(functools.partial(
        train_lib.train_step, model_cfg=model, tok_cfg=tok, tx=_TX, bsc=0.3,
        dtype="bfloat16", remat=True), state, tok_params, batch, key)
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
    for v in metrics.values():
      self.assertEqual(v.shape, ())


if __name__ == "__main__":
  absltest.main()
