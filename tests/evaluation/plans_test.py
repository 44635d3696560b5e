"""Plans side by side, with fake generators (no model runs here).

The end-to-end run through the real sampler is tests/experiments/
evaluate_test.py; here the bookkeeping: spec parsing, prompts files, the
resolver and its hand-off of per-image specs, FLOPs from the run when it
reports them, and the outputs (JSON-valid record, table, frontier, grid).
"""

import dataclasses
import json
import os
import tempfile

from absl.testing import absltest
import numpy as np

from toprovar_jax import flops as flops_lib
from toprovar_jax import sharding
from toprovar_jax.evaluation import plans
from toprovar_jax.metrics import lpips
from toprovar_jax.models import config as config_lib
from toprovar_jax.sampling import runner
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.sparsity import codec
from toprovar_jax.sparsity import plan as plan_lib

_MODEL = "infinity_tiny"
_N, _SIDE = 2, 32


@dataclasses.dataclass(frozen=True, eq=False)
class _OutputWithFlops(runner.Output):
  flops_per_image: np.ndarray = None


def _base():
  return sampler_lib.Sampler(model=config_lib.get_variant(_MODEL),
                             tokenizer=config_lib.get_tokenizer(_MODEL))


def _images(seed, noise):
  rng = np.random.default_rng(seed)
  img = rng.integers(60, 200, (_N, _SIDE, _SIDE, 3))
  return np.clip(img + noise * rng.normal(size=img.shape), 0, 255).astype(
      np.uint8)


def _fake(spec, noise, flops, per_image=None, calls=None):
  """A generator whose images depend on the seed (+ noise by the plan)."""
  def run(params, vae_params, conditions, *, seed, batch_size, cfg_scale,
          tau, mesh):
    if calls is not None:
      calls.append((spec, seed, batch_size, cfg_scale, tau, mesh))
    kw = dict(images=_images(seed, noise), seed=seed, batches=(0, 0),
              rows=(0, 1), timings=dict(compile_generate_s=2.0,
                                        generate_s=0.5, decode_s=0.1),
              mesh=None if mesh is None else sharding.mesh_axes(mesh))
    if per_image is None:
      return runner.Output(**kw)
    return _OutputWithFlops(flops_per_image=np.asarray(per_image), **kw)
  return plans.PlanGenerator(spec=spec, name=spec, run=run, flops=flops)


class SpecsAndPromptsTest(absltest.TestCase):

  def test_dense_goes_first(self):
    self.assertEqual(plans.parse_plan_specs(" fastvar, dense ,a.json,"),
                     ("dense", "fastvar", "a.json"))
    self.assertEqual(plans.parse_plan_specs("emoji_paper"),
                     ("dense", "emoji_paper"))
    with self.assertRaisesRegex(ValueError, "^--plans: lists no plan"):
      plans.parse_plan_specs(" , ")
    with self.assertRaisesRegex(ValueError, "^--plans: plan 'x' is listed"):
      plans.parse_plan_specs("x,dense,x")

  def test_prompts_file(self):
    root = tempfile.mkdtemp()
    for name, text in (("p.txt", "red apple\n\n  cat face \n"),
                       ("e.txt", "\n  \n")):
      with open(os.path.join(root, name), "w") as f:
        f.write(text)
    self.assertEqual(plans.read_prompts(os.path.join(root, "p.txt")),
                     ("red apple", "cat face"))
    with self.assertRaisesRegex(ValueError, "^--prompts: .* holds no prompt"):
      plans.read_prompts(os.path.join(root, "e.txt"))
    with self.assertRaisesRegex(ValueError, "^--prompts: cannot read"):
      plans.read_prompts(os.path.join(root, "missing.txt"))

  def test_conditions_name_the_line(self):
    var = config_lib.get_variant("var_tiny")
    c = plans.make_conditions(var, ("207", "88"), num_samples=3, text_len=0)
    np.testing.assert_array_equal(c.labels, [207, 88, 207])
    with self.assertRaisesRegex(ValueError, "^--prompts: line 2: 'cat' is "
                                "not a class id"):
      plans.make_conditions(var, ("1", "cat"), num_samples=0, text_len=0)
    with self.assertRaisesRegex(ValueError, "^--prompts: line 2: 1000 is "
                                "out of range"):
      plans.make_conditions(var, ("1", "1000"), num_samples=0, text_len=0)
    c = plans.make_conditions(config_lib.get_variant(_MODEL), ("a", "b c"),
                              num_samples=0, text_len=8)
    self.assertEqual(c.prompts, ("a", "b c"))


class ResolverTest(absltest.TestCase):

  def test_static_specs_and_their_flops(self):
    base = _base()
    gen = plans.resolve_generator("skipvar_skip2", base, text_tokens=32)
    self.assertEqual(gen.name, "skipvar_skip2")
    plan = plans.static_plan("skipvar_skip2", base.model)
    self.assertEqual(plan.exit_scale, len(base.model.schedule) - 2)
    self.assertEqual(gen.flops, flops_lib.plan_flops(
        plan, base.model, text_tokens=32).total)
    with self.assertRaisesRegex(plan_lib.PlanError,
                                "^--plans: 'nope': .*no named plan"):
      plans.resolve_generator("nope", base)

  def test_per_image_specs_go_to_the_hand_off(self):
    base = _base()
    # Every spec pipeline.generator_from_spec builds a Branching for.
    for spec in ("skipvar", "adaptive", "skipvar:/x/c.json",
                 "adaptive:/x/plans.json"):
      self.assertTrue(plans.is_dynamic(spec))
      with self.assertRaisesRegex(ValueError, f"^--plans: '{spec}' chooses"):
        plans.resolve_generator(spec, base)
      got = plans.resolve_generator(
          spec, base, dynamic=lambda s: _fake(s, 0.0, None))
      self.assertEqual(got.spec, spec)
    for static in ("skipvar_skip1", "adaptive_plan.json", "dense"):
      self.assertFalse(plans.is_dynamic(static))

  def test_plan_names_must_differ(self):
    base = _base()
    path = os.path.join(tempfile.mkdtemp(), "copy.json")
    with open(path, "w") as f:
      f.write(codec.plan_to_json(plan_lib.dense_plan(base.model)))  # 'dense'
    with self.assertRaisesRegex(ValueError, "both named 'dense'"):
      plans.resolve_generators(("dense", path), base)


class EvaluatePlansTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.calls = []
    cls.mesh = sharding.make_mesh()  # 4 fake CPU devices (conftest)
    cls.conditions = plans.make_conditions(
        config_lib.get_variant(_MODEL), ("a", "b"), num_samples=0, text_len=8)
    gens = (_fake("dense", 0.0, 8e9, calls=cls.calls),
            _fake("noisy", 20.0, 4e9, calls=cls.calls),
            _fake("adaptive:a.json", 5.0, None, per_image=[1e9, 3e9],
                  calls=cls.calls))
    cls.results = plans.evaluate_plans(
        gens, None, None, cls.conditions, seed=7, batch_size=2, cfg_scale=3.0,
        tau=0.5, lpips_params=lpips.load_params(), mesh=cls.mesh)

  def test_same_seed_and_settings_for_every_plan(self):
    self.assertEqual([c[1:5] for c in self.calls], [(7, 2, 3.0, 0.5)] * 3)

  def test_per_image_plans_run_unsharded(self):
    # runner.generate_images refuses a mesh of >1 device for prefix /
    # suffix programs: the adaptive plan gets none instead of failing.
    self.assertEqual([c[5] for c in self.calls], [self.mesh, self.mesh, None])

  def test_scores_flops_and_latency(self):
    dense, noisy, adaptive = self.results
    self.assertEqual(dense.scores["ssim"], 1.0)
    self.assertIsNone(dense.scores["psnr"])
    self.assertEqual(dense.flop_speedup, 1.0)
    self.assertLess(noisy.scores["ssim"], adaptive.scores["ssim"])
    self.assertLess(adaptive.scores["ssim"], 1.0)
    self.assertEqual(noisy.flop_speedup, 2.0)
    self.assertEqual(adaptive.flops_per_image, 2e9)  # the run's mean
    self.assertEqual(adaptive.flop_speedup, 4.0)
    self.assertAlmostEqual(noisy.latency_s, 0.3)  # (0.5 + 0.1) / 2 images
    self.assertEqual(noisy.compile_s, 2.0)

  def test_outputs(self):
    record = plans.results_record(
        self.results, config={"model": _MODEL}, seed=7, prompts_file="p.txt",
        conditions=self.conditions, batch_size=2,
        files={"table": "results.md", "grid": "grid.png"}, mesh=self.mesh,
        wall_s=1.5)
    record = json.loads(json.dumps(record, allow_nan=False))
    self.assertEqual((record["mesh"], record["device_count"]),
                     ({"data": 4}, 4))
    self.assertEqual([p["mesh"] for p in record["plans"]],
                     [{"data": 4}, {"data": 4}, None])
    self.assertIn("null = unsharded", record["notes"]["mesh"])
    # Every file beside results.json, sorted (what io.publish checks).
    self.assertEqual(record["outputs"], ["grid.png", "results.md"])
    self.assertEqual([p["name"] for p in record["plans"]],
                     ["dense", "noisy", "adaptive:a.json"])
    for p in record["plans"]:
      for key in ("name", "flop_speedup", "ssim", "psnr", "lpips",
                  "fd_alexnet", "latency_s"):
        self.assertIn(key, p)
    self.assertEqual((record["seed"], record["prompts"], record["wall_s"]),
                     (7, ["a", "b"], 1.5))
    self.assertIn("NOT FID", record["notes"]["fd_alexnet"])
    table = plans.markdown_table(record)
    self.assertIn("| dense | `dense` | 1.00x | 1.0000 | inf | 0.0000 |",
                  table)
    self.assertIn("| noisy | `noisy` | 2.00x |", table)
    self.assertEqual(plans.frontier_image(record).ndim, 3)
    self.assertEqual(plans.captions(self.conditions), ("a", "b"))
    grid = plans.grid_image(self.results, self.conditions, max_columns=1)
    self.assertEqual(grid.shape, (48 + 3 * (_SIDE + 2) + 2,
                                  220 + (_SIDE + 2) + 2, 3))
    with self.assertRaisesRegex(ValueError, "dense"):
      plans.evaluate_plans(
          (_fake("noisy", 1.0, 1.0),), None, None, self.conditions, seed=0,
          batch_size=1, cfg_scale=1.0, tau=1.0, lpips_params=None)


if __name__ == "__main__":
  absltest.main()
