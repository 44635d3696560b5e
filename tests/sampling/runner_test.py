"""The generate loop (`sampling.runner`) and per-image seeding.

An image depends only on its own key: the same image from a batch of 1 and
as row 3 of a batch of 5 has identical tokens, with random sampling (top-k
and top-p off), dense and with a pruned plan (entropy selection, an X
layer, the SkipVAR branch drop). The runner gives image j the key
fold_in(PRNGKey(seed), j), so `generate_images` makes the same images at
any batch size. All on the micro Infinity config (4 scales, 3 layers) with
a one-level BSQ tokenizer, fp32 CPU.
"""

import dataclasses

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax import sharding
from toprovar_jax import testing
from toprovar_jax.models import config as config_lib
from toprovar_jax.sampling import conditions as conditions_lib
from toprovar_jax.sampling import runner
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import validation

_T = 8
# A stride-1 BSQ VAE: the micro model's 6x6 latent grid is a 6x6 image.
_TOK = config_lib.BSQConfig(base_ch=32, ch_mult=(1,), num_res_blocks=0,
                            codebook_dim=4)


def _setup():
  cfg, params, vae, _, text, mask = testing.micro_infinity_run(5)
  return cfg, params, vae, text, mask


def _sampler(cfg, plan=None):
  # top_k 0, top_p 0: every token is a random draw from its softmax.
  return sampler_lib.Sampler(model=cfg, tokenizer=_TOK, plan=plan,
                             sampling=sampler_lib.SamplingConfig())


class ImageKeysTest(absltest.TestCase):

  def test_image_j_gets_fold_in_of_the_seed_key(self):
    keys = runner.image_keys(7, [0, 3, 12])
    self.assertEqual(keys.shape, (3,))
    for key, j in zip(keys, (0, 3, 12)):
      np.testing.assert_array_equal(
          jax.random.key_data(key),
          jax.random.fold_in(jax.random.PRNGKey(7), j))
    np.testing.assert_array_equal(
        jax.random.key_data(runner.image_keys(7, [3])[0]),
        jax.random.key_data(keys[1]))

  def test_padding_rows_repeat_the_last_condition_with_their_own_keys(self):
    cfg, _, _, text, mask = _setup()
    cond = conditions_lib.Conditions(text=text[:3], text_mask=mask[:3])
    keys, arrays = runner.batch_inputs(_sampler(cfg), cond, range(2, 5),
                                       seed=0)
    np.testing.assert_array_equal(arrays["text"], text[[2, 2, 2]])
    np.testing.assert_array_equal(arrays["text_mask"], mask[[2, 2, 2]])
    np.testing.assert_array_equal(
        jax.random.key_data(keys),
        jax.random.key_data(runner.image_keys(0, [2, 3, 4])))


class BatchIndependenceTest(parameterized.TestCase):

  @parameterized.named_parameters(("dense", False), ("pruned", True))
  def test_an_image_is_the_same_alone_and_as_row_3_of_5(self, pruned):
    cfg, params, _, text, mask = _setup()
    plan = (validation.validate_plan(testing.probe_sx_plan(cfg), cfg)
            if pruned else None)
    smp = _sampler(cfg, plan)
    g, tau = jnp.float32(3.0), jnp.float32(1.0)
    # Image 9 alone, with the text of row 3.
    alone = smp.generate(params, None, runner.image_keys(0, [9]), g, tau,
                         text=jnp.asarray(text[3:4]),
                         text_mask=jnp.asarray(mask[3:4]))
    # Image 9 as row 3 of a batch of 5 other images' keys and texts.
    batch = smp.generate(params, None, runner.image_keys(0, [4, 5, 6, 9, 8]),
                         g, tau, text=jnp.asarray(text),
                         text_mask=jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(batch.tokens[3]),
                                  np.asarray(alone.tokens[0]))
    # The other rows are other images (the draws are random).
    self.assertFalse(np.array_equal(np.asarray(batch.tokens[2]),
                                    np.asarray(batch.tokens[3])))

  def test_bad_keys_name_the_shape(self):
    cfg, params, _, text, mask = _setup()
    with self.assertRaisesRegex(ValueError, r"rng must be \(5,\) typed PRNG "
                                r"keys .* got key<fry> \(\)"):
      _sampler(cfg).generate(params, None, jax.random.key(0),
                             jnp.float32(3.0), jnp.float32(1.0),
                             text=jnp.asarray(text),
                             text_mask=jnp.asarray(mask))


class GenerateImagesTest(absltest.TestCase):

  def test_same_images_at_any_batch_size(self):
    cfg, params, vae, text, mask = _setup()
    cond = conditions_lib.Conditions(text=text[:3], text_mask=mask[:3])
    smp = _sampler(cfg)
    kw = dict(seed=4, cfg_scale=3.0, tau=1.0)
    one = runner.generate_images(smp, params, vae, cond, batch_size=1, **kw)
    two = runner.generate_images(smp, params, vae, cond, batch_size=2, **kw)
    self.assertEqual(one.images.shape, (3, 6, 6, 3))
    self.assertEqual(one.images.dtype, np.uint8)
    np.testing.assert_array_equal(one.images, two.images)
    self.assertEqual((two.batches, two.rows), ((0, 0, 1), (0, 1, 0)))
    self.assertEqual(two.seed, 4)
    for key in ("compile_generate_s", "compile_decode_s", "generate_s",
                "decode_s"):
      self.assertIn(key, two.timings)
    # Another seed, other images.
    other = runner.generate_images(smp, params, vae, cond, batch_size=2,
                                   seed=5, cfg_scale=3.0, tau=1.0)
    self.assertFalse(np.array_equal(other.images, two.images))

  def test_bad_batch_size_names_the_field(self):
    cfg, params, vae, text, mask = _setup()
    cond = conditions_lib.Conditions(text=text, text_mask=mask)
    with self.assertRaisesRegex(ValueError, "config.sampling.batch_size: "
                                r"must be >= 0 \(0 = all"):
      runner.generate_images(_sampler(cfg), params, vae, cond, seed=0,
                             batch_size=-1, cfg_scale=3.0, tau=1.0)

  def test_batch_size_zero_is_all_images_in_one_call(self):
    self.assertEqual(runner.images_per_call(0, 7), 7)
    self.assertEqual(runner.images_per_call(3, 7), 3)
    self.assertEqual(runner.images_per_call(0, 0), 1)  # never a 0-row call

  def test_a_nan_weight_stops_the_run_naming_scale_and_layer(self):
    cfg, params, vae, text, mask = _setup()
    cond = conditions_lib.Conditions(text=text[:2], text_mask=mask[:2])
    kw = dict(seed=0, batch_size=2, cfg_scale=3.0, tau=1.0)
    bad = jax.tree.map(lambda t: t, params)
    bad["blocks"]["ffn"]["fc2"]["bias"] = (
        params["blocks"]["ffn"]["fc2"]["bias"].at[1, 5].set(jnp.nan))
    with self.assertRaisesRegex(
        runner.NonFiniteError,
        r"^non-finite values \(NaN/Inf\) at scale 0 \(1x1\), first in layer 1 "
        r"\(its output; the layers before it are finite\), batch 0, plan "
        r"'dense'"):
      runner.generate_images(_sampler(cfg), params=bad, vae_params=vae,
                             conditions=cond, **kw)
    # X in layer 1 everywhere: the bad block never runs; the head's NaN is
    # caught after every layer was finite.
    plan = validation.validate_plan(testing.with_scales(
        plan_lib.dense_plan(cfg), "x1", lambda s, sp: dataclasses.replace(
            sp, layers="FXF")), cfg)
    bad["stem"]["head"]["bias"] = params["stem"]["head"]["bias"].at[0].set(
        jnp.inf)
    with self.assertRaisesRegex(
        runner.NonFiniteError, r"at scale 0 \(1x1\), first in the logits "
        r"\(every layer's output is finite\)"):
      runner.generate_images(_sampler(cfg, plan), params=bad, vae_params=vae,
                             conditions=cond, **kw)

  def test_place_run_rounds_rows_up_and_replicates_all_but_rows(self):
    _, params, vae, _, _ = _setup()
    plain = runner.place_run(params, vae, batch_size=3, cfg_scale=3.0,
                             tau=0.5, mesh=None)
    self.assertIs(plain.params, params)
    self.assertEqual(plain.rows, 3)
    self.assertEqual([float(g) for g in plain.guidance], [3.0, 0.5])
    mesh = sharding.make_mesh()  # 4 fake CPU devices (conftest)
    placed = runner.place_run(params, vae, batch_size=3, cfg_scale=3.0,
                              tau=0.5, mesh=mesh)
    self.assertEqual(placed.rows, 4)  # a multiple of the data axis
    # A data-only mesh: every parameter, tokenizer leaf and guidance
    # scalar whole on every device.
    for leaf in jax.tree.leaves((placed.params, placed.vae_params,
                                 placed.guidance)):
      self.assertTrue(leaf.sharding.is_fully_replicated)
      self.assertLen(leaf.sharding.device_set, 4)
    jax.tree.map(np.testing.assert_array_equal, placed.params, params)

  def test_plan_slug(self):
    self.assertEqual(runner.plan_slug("a/b c~frequency"), "a_b_c_frequency")
    self.assertEqual(runner.plan_slug("..."), "plan")


if __name__ == "__main__":
  absltest.main()
