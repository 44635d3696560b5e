"""The load-or-init policy (`weights.loading`): abstract trees, loading the
configured checkpoints (through `pipeline.params_from_config`), and the
tokenizer layout the converters must write.

Parameter values come from numpy filled into the tiny models' abstract trees
(`jax.eval_shape`), so these tests never compile an init.
"""

import os

from absl import logging
from absl.testing import absltest
import jax
import numpy as np

from configs import tiny
from tests.weights import fake_trees
from toprovar_jax import pipeline
from toprovar_jax.convert import bsq_vae as convert_bsq_vae
from toprovar_jax.convert import vqvae as convert_vqvae
from toprovar_jax.models import config as config_lib
from toprovar_jax.weights import checkpoints
from toprovar_jax.weights import loading
from toprovar_jax.weights import strict


class LayoutTest(absltest.TestCase):

  def test_tokenizer_layout_is_what_the_converters_write(self):
    # Checkpoints come from the converters; loading restores into its
    # own abstract tree (init on a one-latent-pixel image). They must agree.
    for name, expected in (
        ("var_tiny", convert_vqvae.abstract_variables(
            config_lib.get_tokenizer("var_tiny"))),
        ("infinity_tiny", {"params": convert_bsq_vae.abstract_params(
            config_lib.get_tokenizer("infinity_tiny"))})):
      _, got = fake_trees.abstract(name)
      strict.check_against(got, expected, context=name)
      self.assertEqual(jax.tree.map(lambda x: x.dtype, got),
                       jax.tree.map(lambda x: x.dtype, expected))


class LoadOrInitTest(absltest.TestCase):

  def test_configured_checkpoints_are_loaded_and_named(self):
    root = fake_trees.tempdir(self)
    abstract_tf, abstract_tok = fake_trees.abstract("infinity_tiny")
    params = fake_trees.fill(abstract_tf, 1)
    vae = fake_trees.fill(abstract_tok, 2)
    checkpoints.save_params(os.path.join(root, "transformer"), params)
    checkpoints.save_params(os.path.join(root, "tokenizer"), vae)
    config = tiny.get_config(f"model=infinity_tiny,ckpt_dir={root}")
    got_tf, got_tok, source = pipeline.params_from_config(
        config, jax.random.key(0))
    self.assertEqual(source.transformer, os.path.join(root, "transformer"))
    self.assertEqual(source.tokenizer, os.path.join(root, "tokenizer"))
    self.assertFalse(source.random_init)
    np.testing.assert_array_equal(got_tf["stem"]["head"]["kernel"],
                                  params["stem"]["head"]["kernel"])
    for got, want in zip(jax.tree.leaves(got_tok), jax.tree.leaves(vae)):
      np.testing.assert_array_equal(np.asarray(got), want)

  def test_a_bad_checkpoint_fails_naming_the_config_field(self):
    root = fake_trees.tempdir(self)
    abstract_tf, _ = fake_trees.abstract("var_tiny")
    checkpoints.save_params(
        os.path.join(root, "transformer"),
        fake_trees.drop(fake_trees.fill(abstract_tf), "stem/pos_start"))
    config = tiny.get_config(f"ckpt_dir={root}")
    with self.assertRaisesRegex(checkpoints.ConversionError,
                                r"config.ckpt.transformer(.|\n)*pos_start"):
      pipeline.params_from_config(config, jax.random.key(0))



class RandomInitTest(absltest.TestCase):

  def test_empty_paths_init_randomly_and_say_so(self):
    model = config_lib.get_variant("var_tiny")
    tok = config_lib.get_tokenizer("var_tiny")
    with self.assertLogs(level=logging.WARNING) as logs:
      params, vae, source = loading.load_or_init(
          model, tok, transformer_path="", tokenizer_path="",
          rng=jax.random.key(0))
    self.assertIn("RANDOM-INIT", "".join(logs.output))
    self.assertEqual((source.transformer, source.tokenizer),
                     (loading.RANDOM_INIT, loading.RANDOM_INIT))
    self.assertTrue(source.random_init)
    abstract_tf, abstract_tok = fake_trees.abstract("var_tiny")
    strict.check_against(params, abstract_tf)
    strict.check_against(vae, abstract_tok)

  def test_unknown_embedded_model_names_the_field(self):
    model = config_lib.get_variant("var_tiny")
    with self.assertRaisesRegex(FileNotFoundError,
                                r"config.ckpt.transformer of var_tiny: no "
                                r"embedded transformer weights"):
      loading.load_or_init(model, config_lib.get_tokenizer("var_tiny"),
                           transformer_path="embedded:nothing_here",
                           tokenizer_path="", rng=jax.random.key(0))


if __name__ == "__main__":
  absltest.main()
