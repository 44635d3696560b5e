"""The config boundary: plan specs, samplers (sampling rules apart from
execution settings) and conditions from a config (parameters:
tests/weights/loading_test.py)."""

import os
import tempfile

from absl.testing import absltest

from configs import tiny
from toprovar_jax import pipeline
from toprovar_jax.sparsity import baselines
from toprovar_jax.sparsity import codec
from toprovar_jax.sparsity import plan as plan_lib


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


class ConditionsTest(absltest.TestCase):

  def test_conditions_from_the_config(self):
    config = _config()
    smp = pipeline.sampler_from_config(config)
    cond = pipeline.conditions_from_config(config, smp)
    self.assertEqual(cond.prompts, ("a red apple", "a small blue car"))
    self.assertEqual(cond.text.shape[1], config.sampling.text_len)


if __name__ == "__main__":
  absltest.main()
