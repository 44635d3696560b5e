"""Configs: every file loads locked and typed; args parse; tiny builds."""

import importlib
import os
import pathlib
import tempfile

from absl import flags
from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from ml_collections import config_flags

from configs import common
from toprovar_jax import pipeline
from toprovar_jax.models import config as config_lib
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.text import features

_CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
_CONFIG_NAMES = tuple(sorted(p.stem for p in _CONFIG_DIR.glob("*.py")
                             if p.stem not in ("__init__", "common")))
_EXPECTED = ("infinity_2b", "infinity_8b", "tiny", "var_d16", "var_d20",
             "var_d24", "var_d30", "var_d36")
_TINY = str(_CONFIG_DIR / "tiny.py")


def _get_config(name, arg=None):
  return importlib.import_module(f"configs.{name}").get_config(arg)


def _parse_flags(*argv):
  """Parses argv through config_flags exactly as experiments/*.py do."""
  argv = ["prog", *argv]
  flag_values = flags.FlagValues()
  # Overrides (--config.a.b=...) are read from sys_argv (default sys.argv).
  config_flags.DEFINE_config_file("config", None, "test config",
                                  flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  return flag_values.config


class ConfigFilesTest(parameterized.TestCase):

  def test_every_model_has_a_config_file(self):
    self.assertContainsSubset(_EXPECTED, _CONFIG_NAMES)

  @parameterized.named_parameters((n, n) for n in _CONFIG_NAMES)
  def test_loads_locked_and_builds_a_sampler(self, name):
    config = _get_config(name)
    self.assertTrue(config.is_locked)
    self.assertTrue(config.sampling.is_locked)
    with self.assertRaisesRegex(AttributeError, "bogus"):
      config.sampling.bogus = 1
    if not config.model.get("reference"):  # reference.py: from its json
      self.assertIn(config.model.variant, config_lib.VARIANTS)
    # The Sampler is static configuration only: no parameters, no compile.
    sampler = pipeline.sampler_from_config(config)
    self.assertIsInstance(sampler, sampler_lib.Sampler)
    self.assertEqual(sampler.model.name, config.model.variant)

  @parameterized.named_parameters((n, n) for n in _CONFIG_NAMES)
  def test_docstring_shows_a_full_launch(self, name):
    doc = importlib.import_module(f"configs.{name}").__doc__
    self.assertIn("python -m experiments.generate", doc)
    self.assertIn(f"configs/{name}.py:", doc)
    self.assertRegex(doc, r"--config\.\w+\.\w+=")
    self.assertIn("--workdir=", doc)

  def test_infinity_text_len_is_the_t5_cap(self):
    for name in ("infinity_2b", "infinity_8b"):
      self.assertEqual(_get_config(name).sampling.text_len, 512)

  def test_config_flag_with_arg_and_override(self):
    config = _parse_flags(
        f"--config={_TINY}:model=infinity_tiny,batch_size=3",
        "--config.sampling.seed=7", "--config.sampling.prompts=('x, y',)")
    self.assertEqual(config.model.variant, "infinity_tiny")
    self.assertEqual(config.sampling.batch_size, 3)
    self.assertEqual(config.sampling.seed, 7)
    self.assertEqual(config.sampling.prompts, ("x, y",))

  def test_unknown_override_key_fails(self):
    with self.assertRaisesRegex(AttributeError, "bogus"):
      _parse_flags(f"--config={_TINY}", "--config.sampling.bogus=1")

  def test_override_of_wrong_type_fails(self):
    with self.assertRaises(flags.IllegalFlagValueError):
      _parse_flags(f"--config={_TINY}", "--config.sampling.batch_size=two")


class InfinityTextAndResolutionTest(absltest.TestCase):

  def test_t5_dir_and_resolution_reach_the_run(self):
    # A Flan-T5 of the 2B's text width (2048) with a tiny rest; no
    # transformer parameters are made (the Sampler is static).
    import tempfile  # pylint: disable=g-import-not-at-top
    from tests.text import flan_t5_test  # pylint: disable=g-import-not-at-top
    t5_dir = flan_t5_test.write_folder(tempfile.mkdtemp(), d_model=2048)
    config = _get_config("infinity_2b", f"t5_dir={t5_dir},h_div_w=1.5,"
                         "pixels=0.25M")
    self.assertEqual((config.model.h_div_w, config.model.pixels),
                     (1.5, "0.25M"))
    sampler = pipeline.sampler_from_config(config)
    self.assertEqual(sampler.model.schedule[-1], (39, 26))
    self.assertEqual(sampler.model.rope_grid, (78, 52))
    config.sampling.prompts = ("a red fox in snow", "a")
    cond = pipeline.conditions_from_config(config, sampler)
    self.assertEqual(cond.text_features, f"flan-t5:{t5_dir.name}")
    self.assertEqual(cond.text.shape, (2, 512, 2048))
    self.assertEqual(cond.text_lengths, (6, 2))
    enc = features.flan_t5_encoder(str(t5_dir))
    np.testing.assert_array_equal(cond.text[1, :2],
                                  enc.encode(["a"])[0][0])
    # Without t5_dir: placeholder features, labelled as such.
    plain = _get_config("infinity_2b")
    self.assertEqual(plain.sampling.t5_dir, "")
    self.assertEqual(pipeline.conditions_from_config(
        plain, pipeline.sampler_from_config(plain)).text_features,
                     features.PLACEHOLDER_TEXT)

  def test_a_t5_of_another_width_is_named(self):
    import tempfile  # pylint: disable=g-import-not-at-top
    from tests.text import flan_t5_test  # pylint: disable=g-import-not-at-top
    t5_dir = flan_t5_test.write_folder(tempfile.mkdtemp(), d_model=32)
    config = _get_config("infinity_8b", f"t5_dir={t5_dir}")
    with self.assertRaisesRegex(ValueError, r"^config.sampling.t5_dir: .* is "
                                r"a T5 of width 32, the model reads text "
                                r"features of width 2048"):
      pipeline.conditions_from_config(config,
                                      pipeline.sampler_from_config(config))

  def test_bad_resolution_is_named(self):
    with self.assertRaisesRegex(ValueError, "^model.h_div_w: 1.1 is not"):
      pipeline.sampler_from_config(_get_config("infinity_2b",
                                               "h_div_w=1.1,pixels=1M"))
    with self.assertRaisesRegex(ValueError, "unknown key 't5_dir'"):
      _get_config("var_d16", "t5_dir=/x")


# The text-to-image configs and the argument that makes them Infinity-style.
_TEXT_CONFIGS = (("emoji", ""), ("infinity_2b", ""), ("infinity_8b", ""),
                 ("tiny", "model=infinity_tiny,"))
_SEVEN = tuple(f"caption {i}" for i in range(7))


class PromptsFileTest(parameterized.TestCase):
  """`prompts_file=PATH` in every text-to-image config (SPEC §9, §11)."""

  def _file(self, data: bytes) -> str:
    folder = tempfile.TemporaryDirectory()  # pytest parses no absl flags
    self.addCleanup(folder.cleanup)
    path = os.path.join(folder.name, "prompts.txt")
    with open(path, "wb") as f:
      f.write(data)
    return path

  @parameterized.named_parameters((n, n, a) for n, a in _TEXT_CONFIGS)
  def test_seven_captions_give_seven_images(self, name, arg):
    # Blank and blank-looking lines are skipped, the rest stripped.
    path = self._file(("\n".join(f"  {p} " for p in _SEVEN) +
                       "\n\n \n").encode("utf-8"))
    config = _get_config(name, f"{arg}prompts_file={path}")
    self.assertEqual(config.sampling.prompts, _SEVEN)
    model = pipeline.model_from_config(config)
    self.assertEqual(pipeline.num_samples_from_config(config, model), 7)
    self.assertIn("prompts_file=", importlib.import_module(
        f"configs.{name}").__doc__)

  def test_emoji_samples_multiply_the_count(self):
    path = self._file("\n".join(_SEVEN).encode("utf-8"))
    config = _get_config("emoji", f"prompts_file={path},samples=2")
    self.assertEqual(pipeline.num_samples_from_config(
        config, pipeline.model_from_config(config)), 14)

  @parameterized.named_parameters(("emoji", "emoji", 1, 3),
                                  ("emoji_samples", "emoji", 2, 6),
                                  ("infinity_2b", "infinity_2b", 1, 3))
  def test_an_override_of_the_prompts_sets_the_count(self, name, samples,
                                                     count):
    arg = f":samples={samples}" if name == "emoji" else ""
    config = _parse_flags(f"--config={_CONFIG_DIR / name}.py{arg}",
                          "--config.sampling.prompts=('a', 'b', 'c')")
    self.assertEqual(pipeline.num_samples_from_config(
        config, pipeline.model_from_config(config)), count)

  @parameterized.named_parameters(
      ("missing", None, "cannot read .*No such file"),
      ("folder", "folder", "cannot read .*Is a directory"),
      ("not_utf8", b"caf\xe9\n", "cannot read .*'utf-8' codec"),
      ("empty", b"\n  \n\n", "holds no prompt"))
  def test_a_bad_file_is_named_with_its_path(self, data, pattern):
    if data is None:
      path = os.path.join(os.path.dirname(self._file(b"x")), "nope.txt")
    elif data == "folder":
      path = os.path.dirname(self._file(b"x"))
    else:
      path = self._file(data)
    for name, arg in _TEXT_CONFIGS:
      with self.assertRaises(ValueError) as caught:
        _get_config(name, f"{arg}prompts_file={path}")
      message = str(caught.exception)
      self.assertStartsWith(message, "config arg 'prompts_file': ")
      self.assertIn(repr(path), message)
      self.assertRegex(message, pattern)
      self.assertNotIn("\n", message)  # one line

  def test_class_conditional_configs_refuse_it(self):
    with self.assertRaisesRegex(ValueError, "^config arg 'prompts_file': "
                                "var_tiny is class-conditional"):
      _get_config("tiny", f"prompts_file={_TINY}")
    with self.assertRaisesRegex(ValueError, "unknown key 'prompts_file'"):
      _get_config("var_d16", f"prompts_file={_TINY}")


class ParseArgTest(absltest.TestCase):

  def test_typed_values(self):
    arg = common.parse_arg("n=3,x=0.5,name=abc,flag,off=false", n=1, x=1.0,
                           name="", flag=False, off=True)
    self.assertEqual((arg.n, arg.x, arg.name, arg.flag, arg.off),
                     (3, 0.5, "abc", True, False))
    self.assertIsInstance(arg.x, float)
    self.assertTrue(arg.is_locked)

  def test_defaults_when_empty(self):
    for raw in (None, "", " , "):
      self.assertEqual(common.parse_arg(raw, n=1).n, 1)

  def test_unknown_key_is_named_with_the_known_ones(self):
    with self.assertRaisesRegex(ValueError, r"'bogus'.*\['flag', 'n'\]"):
      common.parse_arg("bogus=1", n=1, flag=False)

  def test_bad_type_names_the_key(self):
    with self.assertRaisesRegex(ValueError, "'n': expected int, got 'x'"):
      common.parse_arg("n=x", n=1)
    with self.assertRaisesRegex(ValueError, "'flag': expected bool"):
      common.parse_arg("flag=maybe", flag=False)

  def test_bare_word_needs_a_bool(self):
    with self.assertRaisesRegex(ValueError, "'n'.*bare word"):
      common.parse_arg("n", n=1)

  def test_repeated_key(self):
    with self.assertRaisesRegex(ValueError, "'n': given twice"):
      common.parse_arg("n=1,n=2", n=1)

  def test_config_file_args(self):
    self.assertEqual(_get_config("var_d16", "bf16").model.dtype, "bfloat16")
    self.assertEqual(
        _get_config("var_d16", "ckpt_dir=/c").ckpt.transformer,
        "/c/transformer")
    with self.assertRaisesRegex(ValueError, "unknown key 'bogus'"):
      _get_config("tiny", "bogus=1")
    with self.assertRaisesRegex(ValueError, "'model'.*not a tiny model"):
      _get_config("tiny", "model=var_d16")


class TinyConfigTest(parameterized.TestCase):

  @parameterized.named_parameters(("var", "var_tiny"),
                                  ("infinity", "infinity_tiny"))
  def test_builds_sampler_and_conditions(self, model):
    config = _get_config("tiny", f"model={model}")
    sampler = pipeline.sampler_from_config(config)
    self.assertEqual(sampler.model.name, model)
    self.assertEqual(sampler.resolved_plan,
                     plan_lib.dense_plan(sampler.model))
    cond = pipeline.conditions_from_config(config, sampler)
    self.assertEqual(cond.num_samples, 2)
    if model == "var_tiny":
      np.testing.assert_array_equal(cond.labels, [207, 88])
    else:
      self.assertEqual(cond.text.shape, (2, 32, sampler.model.text_dim))
      self.assertEqual(cond.text_mask.sum(axis=1).tolist(),
                       list(cond.text_lengths))
      self.assertEqual(cond.text_features, features.PLACEHOLDER_TEXT)

  @parameterized.named_parameters(
      # 0 is valid: all images in one batch.
      ("batch_size", "var_tiny", "sampling.batch_size", -1,
       "sampling.batch_size: must be >= 0"),
      ("labels_range", "var_tiny", "sampling.labels", (3, 1000),
       r"sampling.labels\[1\]: 1000 is out of range"),
      ("labels_empty", "var_tiny", "sampling.labels", (), "sampling.labels"),
      ("prompts_empty", "infinity_tiny", "sampling.prompts", (),
       "sampling.prompts"),
      ("text_len", "infinity_tiny", "sampling.text_len", 513,
       "sampling.text_len"),
      ("dtype", "var_tiny", "model.dtype", "fp8", "model.dtype"),
      ("unroll_tokens", "var_tiny", "sampling.unroll_tokens", -1,
       "sampling.unroll_tokens"),
      ("kv_read", "var_tiny", "sampling.kv_read", "copy",
       "sampling.kv_read: 'copy'"))
  def test_bad_fields_are_named(self, model, field, value, pattern):
    config = _get_config("tiny", f"model={model}")
    group, key = field.split(".")
    config[group][key] = value
    with self.assertRaisesRegex(ValueError, pattern):
      sampler = pipeline.sampler_from_config(config)
      pipeline.conditions_from_config(config, sampler)

  def test_unroll_tokens_reaches_the_sampler(self):
    config = _get_config("tiny")
    self.assertEqual(pipeline.sampler_from_config(config).execution
                     .unroll_tokens, 0)
    config.sampling.unroll_tokens = 64
    self.assertEqual(pipeline.sampler_from_config(config).execution
                     .unroll_tokens, 64)

  def test_kv_read_reaches_the_sampler(self):
    config = _get_config("tiny")
    self.assertEqual(pipeline.sampler_from_config(config).execution.kv_read,
                     "slice")
    config.sampling.kv_read = "buffer"
    self.assertEqual(pipeline.sampler_from_config(config).execution.kv_read,
                     "buffer")

  def test_bad_plan_passes_plan_error_through(self):
    config = _get_config("tiny")
    config.sparsity.plan = "infinity_2b_paper"
    with self.assertRaisesRegex(plan_lib.PlanError, "num_layers"):
      pipeline.sampler_from_config(config)


if __name__ == "__main__":
  absltest.main()
