"""The config boundary: plan specs, samplers (sampling rules apart from
execution settings) and conditions from a config (parameters:
tests/weights/loading_test.py)."""

import os
import tempfile

from absl.testing import absltest

from configs import emoji
from configs import tiny
from toprovar_jax import pipeline
from toprovar_jax.sparsity import baselines
from toprovar_jax.sparsity import codec
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.text import features


def _config(**fields):
  config = tiny.get_config("model=infinity_tiny")
  config.unlock()  # compare is optional in configs: tiny has none
  for path, value in fields.items():
    group, key = path.split(".")
    config[group][key] = value
  return config


class PlanSpecsTest(absltest.TestCase):

  def test_reference_then_compared_plans(self):
    self.assertEqual(pipeline.plan_specs(_config()), ("dense",))
    self.assertEqual(pipeline.plan_specs(_config(**{
        "sparsity.compare": " a.json , b "})), ("dense", "a.json", "b"))

  def test_a_plan_listed_twice_is_named(self):
    with self.assertRaisesRegex(ValueError, r"config.sparsity.compare: plan "
                                r"'dense' is listed twice"):
      pipeline.plan_specs(_config(**{"sparsity.compare": "dense"}))
    with self.assertRaisesRegex(ValueError, "config.sparsity.compare: must "
                                "be a comma-separated string"):
      pipeline.plan_specs(_config(**{"sparsity.compare": 3}))


class SamplersTest(absltest.TestCase):

  def test_rules_and_execution_settings(self):
    config = _config(**{"sampling.unroll_tokens": 16,
                        "sampling.attn_impl": "cudnn"})
    smp = pipeline.sampler_from_config(config)
    self.assertEqual((smp.sampling.top_k, smp.sampling.top_p,
                      smp.sampling.dtype),
                     (config.sampling.top_k, config.sampling.top_p,
                      config.model.dtype))
    self.assertEqual((smp.execution.attn_impl, smp.execution.unroll_tokens,
                      smp.execution.kv_read), ("cudnn", 16, "slice"))

  def test_compared_plans_share_everything_but_the_plan(self):
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, "half.json")
      cfg = pipeline.sampler_from_config(_config()).model
      plan = baselines.skipvar_plan(cfg, skip_scales=1)
      with open(path, "w") as f:
        f.write(codec.plan_to_json(plan))
      a, b = pipeline.samplers_from_config(_config(**{
          "sparsity.compare": path}))
      self.assertEqual((a.resolved_plan.name, b.resolved_plan.name),
                       ("dense", "skipvar_skip1"))
      self.assertEqual((a.sampling, a.execution, a.model),
                       (b.sampling, b.execution, b.model))
      # Two plans of one name would write over each other's files.
      with open(path, "w") as f:
        f.write(codec.plan_to_json(plan_lib.dense_plan(cfg)))
      with self.assertRaisesRegex(ValueError, "are both named 'dense'"):
        pipeline.samplers_from_config(_config(**{"sparsity.compare": path}))


_SEVEN = ("grinning face", "red apple", "dog face", "cat face", "rainbow",
          "pizza", "red heart")


def _prompts_file(test, lines):
  """A UTF-8 prompts file (blank lines around and between the lines),
  removed after `test`."""
  folder = tempfile.TemporaryDirectory()
  test.addCleanup(folder.cleanup)
  path = os.path.join(folder.name, "prompts.txt")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n  \n".join(lines) + "\n\n")
  return path


class ConditionsTest(absltest.TestCase):

  def _conditions(self, config):
    return pipeline.conditions_from_config(
        config, pipeline.sampler_from_config(config))

  def test_conditions_from_the_config(self):
    config = _config()
    cond = self._conditions(config)
    self.assertEqual(cond.prompts, ("a red apple", "a small blue car"))
    self.assertEqual(cond.text.shape[1], config.sampling.text_len)

  def test_the_count_follows_the_prompts_file_and_samples(self):
    path = _prompts_file(self, _SEVEN)
    for arg, count in (("", 7), (",samples=2", 14)):
      config = emoji.get_config(f"prompts_file={path}{arg}")
      cond = self._conditions(config)
      self.assertEqual(cond.num_samples, count)
      # Cycled: caption i, then every caption again for the second sample.
      self.assertEqual(cond.prompts, _SEVEN * (count // 7))
      self.assertEqual(cond.text.shape[0], count)
      self.assertEqual(cond.text_features, features.MINILM_TEXT)
    config = tiny.get_config(f"model=infinity_tiny,prompts_file={path}")
    self.assertEqual(self._conditions(config).prompts, _SEVEN)

  def test_the_count_follows_an_override_of_the_prompts(self):
    config = _config(**{"sampling.prompts": ("a", "b", "c")})
    self.assertEqual(self._conditions(config).prompts, ("a", "b", "c"))
    config.sampling.samples_per_prompt = 2
    self.assertEqual(self._conditions(config).prompts, ("a", "b", "c") * 2)
    # An explicit count still cycles the prompts to it.
    config = _config(**{"sampling.prompts": ("a", "b", "c"),
                        "sampling.num_samples": 4})
    self.assertEqual(self._conditions(config).prompts, ("a", "b", "c", "a"))
    var = tiny.get_config()
    var.sampling.samples_per_prompt = 3
    self.assertEqual(self._conditions(var).labels.tolist(), [207, 88] * 3)

  def test_batch_size_zero_is_valid_and_bad_counts_are_named(self):
    self.assertEqual(self._conditions(_config(**{
        "sampling.batch_size": 0})).num_samples, 2)
    for fields, pattern in (
        ({"sampling.samples_per_prompt": 0},
         "^config.sampling.samples_per_prompt: must be >= 1"),
        ({"sampling.samples_per_prompt": 2, "sampling.num_samples": 3},
         "^config.sampling.samples_per_prompt: is 2, but sampling."
         "num_samples = 3 sets the count"),
        ({"sampling.batch_size": -1},
         r"^config.sampling.batch_size: must be >= 0 \(0 = all")):
      with self.assertRaisesRegex(ValueError, pattern):
        self._conditions(_config(**fields))


class GeneratorsTest(absltest.TestCase):

  def test_static_skipvar_and_adaptive_specs(self):
    from toprovar_jax.sampling import branching
    from toprovar_jax.sparsity import adaptive
    from toprovar_jax.sparsity import classifier
    import json
    config = _config()
    self.assertEqual(pipeline.generator_from_spec(config, "dense"),
                     pipeline.sampler_from_config(config))
    with tempfile.TemporaryDirectory() as d:
      sk = os.path.join(d, "skipvar.json")
      with open(sk, "w") as f:
        json.dump(dict(
            model="infinity_tiny", decision_scale=4, feature_scale=2,
            freq_ratio=0.4, classes=["skipvar_skip0", "skipvar_skip2"],
            mean=[0, 0], scale=[1, 1], weights=[[0, 0], [0, 0]],
            bias=[0, 0]), f)
      gen = pipeline.generator_from_spec(config, f"skipvar:{sk}")
      self.assertIsInstance(gen, branching.Branching)
      self.assertEqual([p.name for p in gen.plans],
                       ["skipvar_skip0", "skipvar_skip2"])
      ad = os.path.join(d, "ad.json")
      with open(ad, "w") as f:
        json.dump(dict(name="tiny_adaptive", decision_scale=5,
                       statistic_scales=[3, 4],
                       plans=["dense", "skipvar_skip2"],
                       thresholds=[0.5]), f)
      self.assertEqual(
          [p.name for p in pipeline.generator_from_spec(
              config, f"adaptive:{ad}").plans], ["dense", "skipvar_skip2"])
      base = pipeline.sampler_from_config(config).model
      with open(os.path.join(d, "skip2.json"), "w") as f:
        f.write(codec.plan_to_json(baselines.skipvar_plan(base,
                                                          skip_scales=2)))
      with open(ad, "w") as f:
        json.dump(dict(name="tiny_adaptive", decision_scale=5,
                       statistic_scales=[3, 4],
                       plans=["dense", "skip2.json"], thresholds=[0.5]), f)
      gens = pipeline.generators_from_config(_config(**{
          "sparsity.compare": f"adaptive:{ad}"}))
      self.assertEqual(gens[1].name, "tiny_adaptive")
      self.assertIsInstance(gens[1].policy.spec, adaptive.AdaptiveSpec)
      self.assertIsInstance(classifier.load_spec(sk), classifier.SkipVarSpec)
    # No classifier ships for the tiny model: the error names the file it
    # looked for and how to make one.
    for method, trainer in (("skipvar", "train_skipvar"),
                            ("adaptive", "calibrate_adaptive")):
      with self.assertRaisesRegex(
          plan_lib.PlanError,
          rf"^field 'plan': '{method}' chooses its plan per image .* none "
          rf"ships for infinity_tiny \(infinity_tiny_{method}.json under "
          rf".*decisions\); make one with experiments/{trainer}.py and pass "
          rf"'{method}:PATH'$"):
        pipeline.generator_from_spec(config, method)


class ShippedDecisionsTest(absltest.TestCase):

  def test_emoji_skipvar_and_adaptive_load(self):
    config = emoji.get_config()
    sk = pipeline.generator_from_spec(config, "skipvar")
    self.assertEqual([p.name for p in sk.plans],
                     [f"skipvar_skip{k}" for k in range(4)])
    self.assertEqual(sk.decision_scale, 10)
    ad = pipeline.generator_from_spec(config, "adaptive")
    self.assertEqual(ad.decision_scale, 10)
    self.assertBetween(len(ad.plans), 2, 4)


if __name__ == "__main__":
  absltest.main()
