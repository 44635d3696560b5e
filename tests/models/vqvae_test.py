"""Parity tests of VAR's multi-scale VQVAE against the official golden files.

Reference arrays (reference README §4, `var_tiny*.npz`) are NCHW and the port
is NHWC, so every comparison transposes the reference first. Tolerances are
the README §6 ones for an fp32 port: 1e-4 for latents, 2e-4 for images, exact
indices. The smallest nearest-vs-second-nearest distance gap of the golden
image is 1.6e-4 (README §5.4), well above our latent error, so exact index
equality is a fair requirement.
"""

import functools

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax import testing
from toprovar_jax.convert import common
from toprovar_jax.convert import vqvae as convert_lib
from toprovar_jax.models import config as config_lib
from toprovar_jax.models import vqvae

_CFG = config_lib.TOKENIZERS['var_tiny']
_PATCH_NUMS = _CFG.patch_nums

# Reference README §2 (tiny) and ARCHITECTURES A.1 (vae_ch160v4096z32.pth).
_TINY_PARAMS = 4_489_987
_FULL_PARAMS = 108_948_355

_LATENT_TOL = 1e-4
_IMAGE_TOL = 2e-4
_NEXT_INPUT_TOL = 1e-5


def _nhwc(x):
  return np.transpose(np.asarray(x), (0, 2, 3, 1))


def _split_scales(idx_BL):
  """(B, L) row-major indices -> list of (B, p, p) per scale."""
  out, start = [], 0
  for p in _PATCH_NUMS:
    out.append(idx_BL[:, start:start + p * p].reshape(-1, p, p))
    start += p * p
  assert start == idx_BL.shape[1]
  return out


def _max_err(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) -
                             np.asarray(b, np.float64))))


@functools.lru_cache(maxsize=None)
def _reference():
  return testing.load_reference('var_tiny')


@functools.lru_cache(maxsize=None)
def _state_dict():
  return common.strip_prefix(_reference(), 'vae/')


@functools.lru_cache(maxsize=None)
def _variables():
  # verify=True (the default) also checks the tree against eval_shape(init).
  return jax.device_put(convert_lib.convert_vqvae(_state_dict(), _CFG))


_MODEL = vqvae.VQVAE(_CFG)


@jax.jit
def _encode_and_quantise(variables, img):
  f = _MODEL.apply(variables, img, method=vqvae.VQVAE.encode)
  indices, f_hats = _MODEL.apply(variables, f, return_f_hat=True,
                                 method=vqvae.VQVAE.f_to_indices)
  return f, indices, f_hats


@jax.jit
def _teacher_forcing(variables, gt_idx, ref_f_hats):
  """All sampler-side steps in one compilation (one per static scale else).

  Args:
    variables: converted VQVAE variables.
    gt_idx: per scale (B, p, p) indices.
    ref_f_hats: (S, B, P, P, Cvae) reference running f_hat.

  Returns:
    per-scale f_hat from `add_scale`, the f_hat of `indices_to_f_hat`, and
    per-scale `next_input` of the reference f_hat of the previous scale.
  """
  f_hat = jnp.zeros(ref_f_hats.shape[1:], jnp.float32)
  f_hats, next_inputs = [], []
  for si, idx in enumerate(gt_idx):
    f_hat = _MODEL.apply(variables, f_hat, idx, si,
                         method=vqvae.VQVAE.add_scale)
    f_hats.append(f_hat)
    if si + 1 < len(gt_idx):
      next_inputs.append(_MODEL.apply(variables, ref_f_hats[si], si,
                                      method=vqvae.VQVAE.next_input))
  final = _MODEL.apply(variables, gt_idx, method=vqvae.VQVAE.indices_to_f_hat)
  return f_hats, final, next_inputs


@functools.lru_cache(maxsize=None)
def _encoded():
  """(f, indices, f_hats) of the golden input image, computed once."""
  img = _nhwc(_reference()['vaetest/img_in'])
  return jax.tree.map(np.asarray, _encode_and_quantise(_variables(), img))


@functools.lru_cache(maxsize=None)
def _teacher_forced():
  ref = _reference()
  idx = [jnp.asarray(i) for i in _split_scales(ref['tf/gt_idx'])]
  ref_f_hats = np.transpose(ref['tf/f_hat'], (0, 1, 3, 4, 2))
  return jax.tree.map(np.asarray,
                      _teacher_forcing(_variables(), idx, ref_f_hats))


@jax.jit
def _decode_both(variables, rec_idx, sample_f_hat):
  """Decodes the f_hat of `rec_idx` (B=1) and `sample_f_hat` (B=2) as B=3.

  One batch means one compilation of the 256 px decoder, which dominates the
  file's runtime on CPU. The first f_hat is rebuilt from indices, as the
  official `idxBl_to_img(same_shape=True, last_one=True)` does.
  """
  f_hat = _MODEL.apply(variables, rec_idx,
                       method=vqvae.VQVAE.indices_to_f_hat)
  f_hat = jnp.concatenate([f_hat, sample_f_hat], axis=0)
  return _MODEL.apply(variables, f_hat, method=vqvae.VQVAE.decode)


@functools.lru_cache(maxsize=None)
def _decoded():
  """(vaetest reconstruction (1, H, W, 3), sample images (2, H, W, 3))."""
  ref = _reference()
  idx = [jnp.asarray(i) for i in _split_scales(ref['vaetest/idx'])]
  img = np.asarray(
      _decode_both(_variables(), idx, _nhwc(ref['sample/f_hat'])))
  return img[:1], img[1:]


class ParamCountTest(absltest.TestCase):

  def test_tiny_and_full_param_counts(self):
    for cfg, want in ((_CFG, _TINY_PARAMS),
                      (config_lib.VQVAEConfig(), _FULL_PARAMS)):
      # eval_shape: shapes only, nothing allocated. Only 'params' exist (the
      # EMA hit statistic is not a parameter and is not modelled).
      abstract = convert_lib.abstract_variables(cfg)
      self.assertEqual(set(abstract), {'params'})
      self.assertEqual(convert_lib.count_params(abstract), want)

  def test_phi_table(self):
    # ARCHITECTURES A.5: hard-coded table for the 10-scale schedules.
    self.assertEqual(_CFG.phi_index, (0, 0, 1, 1, 1, 2, 2, 3, 3, 3))


class EncodeTest(absltest.TestCase):

  def test_encoder_features(self):
    f, _, _ = _encoded()
    want = _nhwc(_reference()['vaetest/f'])
    self.assertEqual(f.shape, want.shape)
    self.assertLess(_max_err(f, want), _LATENT_TOL)

  def test_indices_exact(self):
    _, indices, _ = _encoded()
    got = np.concatenate([i.reshape(i.shape[0], -1) for i in indices], axis=1)
    want = _reference()['vaetest/idx']
    self.assertEqual(got.shape, (1, 680))
    self.assertEqual(got.dtype, np.int32)
    np.testing.assert_array_equal(got, want)

  def test_running_f_hat_per_scale(self):
    _, _, f_hats = _encoded()
    want = _reference()['vaetest/f_hat']
    for si, f_hat in enumerate(f_hats):
      with self.subTest(scale=si):
        self.assertLess(_max_err(f_hat, _nhwc(want[si])), _LATENT_TOL)

class TeacherForcingTest(absltest.TestCase):

  def test_add_scale_reproduces_tf_f_hat(self):
    f_hats, _, _ = _teacher_forced()
    want = _reference()['tf/f_hat']
    self.assertLen(f_hats, len(_PATCH_NUMS))
    for si, f_hat in enumerate(f_hats):
      with self.subTest(scale=si):
        self.assertEqual(f_hat.shape, (2, 16, 16, _CFG.z_channels))
        self.assertLess(_max_err(f_hat, _nhwc(want[si])), _LATENT_TOL)

  def test_indices_to_f_hat_equals_last_add_scale(self):
    f_hats, final, _ = _teacher_forced()
    self.assertLess(_max_err(final, f_hats[-1]), 1e-6)

  def test_next_input_reproduces_teacher_forcing_input(self):
    _, _, next_inputs = _teacher_forced()
    x_BLC = _reference()['tf/x_BLCv_wo_first_l']
    start = 0
    for si, got in enumerate(next_inputs):
      p = _PATCH_NUMS[si + 1]
      self.assertEqual(got.shape, (2, p, p, _CFG.z_channels))
      want = x_BLC[:, start:start + p * p].reshape(2, p, p, -1)
      start += p * p
      with self.subTest(scale=si + 1):
        self.assertLess(_max_err(got, want), _NEXT_INPUT_TOL)
    self.assertEqual(start, x_BLC.shape[1])


class DecodeTest(absltest.TestCase):

  def test_reconstruction_from_indices(self):
    img, _ = _decoded()
    want = _nhwc(_reference()['vaetest/img_rec'])
    self.assertEqual(img.shape, want.shape)
    self.assertLess(_max_err(img, want), _IMAGE_TOL)

  def test_sampled_f_hat_decodes_to_sample_image(self):
    _, img = _decoded()
    # The sampler returns (x + 1) / 2 in [0, 1] (reference README §3).
    want = _nhwc(_reference()['sample/img'])
    self.assertLess(_max_err((img + 1) / 2, want), _IMAGE_TOL / 2)
    self.assertLessEqual(img.max(), 1.0)
    self.assertGreaterEqual(img.min(), -1.0)


if __name__ == '__main__':
  absltest.main()
