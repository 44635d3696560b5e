"""A calibration run on the micro Infinity model: statistics, resume, report.

The micro config (4 scales to 6x6, 3 layers) with a stride-2 BSQ tokenizer
(12x12 images), random weights, fp32 CPU. An interrupted run (an exception
after its first batch) resumes from its saved state and ends with the same
statistics and images as an uninterrupted one. On a mesh (SPEC §10, the 4
fake CPU devices of conftest) the statistics and the plan are those of one
device: bit for bit with the same rows per device, within float32
rounding of XLA's kernels otherwise (`MeshTest`); a NaN stops the run.
"""

import functools
import json
import pathlib
import tempfile
from unittest import mock

from absl.testing import absltest
import jax
import numpy as np

from toprovar_jax import sharding
from toprovar_jax import testing
from toprovar_jax.sparsity import codec
from toprovar_jax.evaluation import budget
from toprovar_jax.evaluation import calibration as run_lib
from toprovar_jax.models import config as config_lib
from toprovar_jax.sampling import conditions as conditions_lib
from toprovar_jax.sampling import runner
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.sparsity import calibration
from toprovar_jax.sparsity import named
from toprovar_jax.sparsity import plan as plan_lib

TOK = config_lib.BSQConfig(base_ch=32, ch_mult=(1, 1), num_res_blocks=0,
                           codebook_dim=4)
RUN = dict(seed=3, batch_size=2, cfg_scale=3.0, tau=1.0)


@functools.lru_cache(maxsize=None)
def setup():
  cfg, params, vae, tok, text, mask = testing.micro_infinity_run(5, stride=2)
  cond = conditions_lib.Conditions(text=text, text_mask=mask)
  sampler = sampler_lib.Sampler(model=cfg, tokenizer=tok)
  return sampler, params, vae, cond


def collect(workdir, **kw):
  sampler, params, vae, cond = setup()
  return run_lib.collect(sampler, params, vae, cond, pathlib.Path(workdir),
                         rep_side=6, num_samples=2, **{**RUN, **kw})


class Stop(Exception):
  pass


class CollectTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    cls.full_dir = pathlib.Path(cls.tmp.name) / "full"
    cls.full_dir.mkdir()
    cls.full = collect(cls.full_dir)

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def test_dense_images_equal_the_runner_and_entropy_is_bounded(self):
    sampler, params, vae, cond = setup()
    self.assertEqual(self.full.num_images, 5)
    out = runner.generate_images(sampler, params, vae, cond, **RUN)
    np.testing.assert_array_equal(run_lib.dense_images(self.full_dir, 5),
                                  out.images)
    # Every token's entropy is a finite, non-negative number of nats, at
    # most log(keys) (scale 0: one key per layer, entropy 0).
    self.assertTrue(np.all(self.full.samples[:, :, 0] == 0))
    keys = np.repeat(np.cumsum([1, 4, 16, 36]), [1, 4, 16, 36])
    self.assertTrue(np.all(self.full.samples >= -1e-6))
    self.assertTrue(np.all(self.full.samples <= np.log(keys) + 1e-5))

  def test_interrupted_run_resumes_to_the_same_statistics(self):
    with tempfile.TemporaryDirectory() as d:
      def stop(j):
        raise Stop(j)
      with self.assertRaises(Stop):
        collect(d, on_batch=stop)
      saved = run_lib.stats_lib.EntropyStatistics.load(
          pathlib.Path(d) / run_lib.STATE)
      self.assertEqual(saved.num_images, 2)
      resumed = collect(d)
      self.assertEqual(resumed.num_images, 5)
      for name in ("rho_sum", "ratios", "hist_count", "map_sum", "samples"):
        np.testing.assert_allclose(getattr(resumed, name),
                                   getattr(self.full, name), rtol=1e-6)
      np.testing.assert_array_equal(run_lib.dense_images(pathlib.Path(d), 5),
                                    run_lib.dense_images(self.full_dir, 5))
      sampler, params, vae, cond = setup()
      other = conditions_lib.Conditions(text=cond.text[::-1],
                                        text_mask=cond.text_mask[::-1])
      with self.assertRaisesRegex(ValueError, "from another run"):
        run_lib.collect(sampler, params, vae, other, pathlib.Path(d),
                        rep_side=6, **RUN)

  def test_report_files_and_the_plan_loads(self):
    cal = calibration.calibrate(self.full, setup()[0].model,
                                calibration.CalibrationConfig(tau=0.0))
    with tempfile.TemporaryDirectory() as d:
      d = pathlib.Path(d)
      (d / "dense").mkdir()
      for i, img in enumerate(run_lib.dense_images(self.full_dir, 2)):
        run_lib.io.write_png_atomic(d / "dense" / f"{i:04d}.png", img)
      run_lib.write_report(d, self.full, cal, extra=dict(flop_speedup=1.5))
      names = {p.name for p in d.iterdir()}
      self.assertLessEqual({"plan.json", "calibration.json", "rho_s.png",
                            "layer_ratio.png", "entropy_maps.png"}, names)
      self.assertEqual(named.load_plan(str(d / "plan.json"),
                                       setup()[0].model), cal.plan)
      rec = json.loads((d / "calibration.json").read_text())
      self.assertEqual(rec["num_images"], 5)
      self.assertEqual(rec["flop_speedup"], 1.5)
      self.assertEqual(rec["keep"], list(cal.keep))
      self.assertEqual("kept_tokens.png" in names,
                       any(sp.scorer == "entropy" for sp in cal.plan.scales))

  def test_ssim_evaluator_and_frontier_files(self):
    sampler, params, vae, cond = setup()
    evaluate = budget.ssim_evaluator(
        sampler, params, vae, cond, run_lib.dense_images(self.full_dir, 5),
        **RUN)
    # The dense plan without entropy recording makes the same images.
    self.assertEqual(evaluate(plan_lib.dense_plan(sampler.model)), 1.0)
    record = dict(target_ssim=0.8, plans=[
        dict(flop_speedup=1.5, ssim=0.9, chosen=True),
        dict(flop_speedup=2.5, ssim=0.7, chosen=False)])
    with tempfile.TemporaryDirectory() as d:
      self.assertIsNone(run_lib.read_frontier(pathlib.Path(d)))
      run_lib.write_frontier(pathlib.Path(d), record)
      self.assertEqual(json.loads((pathlib.Path(d) / "frontier.json")
                                  .read_text()), record)
      self.assertEqual(run_lib.read_frontier(pathlib.Path(d)), record)
      self.assertTrue((pathlib.Path(d) / "frontier.png").is_file())

  def test_kept_masks_keep_the_lowest_probe_entropy(self):
    cfg = setup()[0].model
    plan = testing.probe_sx_plan(cfg, keep=(8, 16))
    masks = run_lib.kept_masks(self.full, plan)
    self.assertEqual(sorted(masks), [2, 3])
    ent = self.full.samples[:, 0, 5:21]  # scale 2 (4x4), probe layer 0
    m = masks[2].reshape(2, -1)
    self.assertTrue(np.all(m.sum(1) == 8))
    for e, k in zip(ent, m):
      self.assertLessEqual(e[k].max(), e[~k].min())
    self.assertEqual(masks[3].shape, (2, 6, 6))

  def test_prompts_file(self):
    cfg = testing.micro_var()
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
      f.write("3\n\n7\n")
      f.flush()
      cond = run_lib.read_conditions(f.name, cfg, num_images=3, text_len=0)
      np.testing.assert_array_equal(cond.labels, [3, 7, 3])
      f.write("cat\n")
      f.flush()
      with self.assertRaisesRegex(ValueError, "one integer class label"):
        run_lib.read_conditions(f.name, cfg, num_images=0, text_len=0)
    with self.assertRaisesRegex(ValueError, "prompts: cannot read"):
      run_lib.read_conditions("/nonexistent.txt", cfg, num_images=0,
                              text_len=0)


# Every array of EntropyStatistics (what the decisions and figures read).
_STATS = ("rho_sum", "entropy_sum", "ratios", "map_sum", "hist_count",
          "hist_sum", "samples")
# Two configurations of the levels: the default, and tau 0 (every scale
# from the first one prunable: token counts from the histograms).
_LEVELS = (calibration.CalibrationConfig(),
           calibration.CalibrationConfig(tau=0.0))


class MeshTest(absltest.TestCase):
  """`collect` on a 1-device mesh and on the 4-device default mesh.

  5 images. `one`: batch 2 on one device (2 rows per call, 3 calls).
  `four`: batch 2 on 4 devices (4 rows per call, 1 per device; 2 calls, 3
  padding rows). `four_wide`: batch 8 on 4 devices (2 rows per device, as
  `one`; 1 call, 3 padding rows).
  """

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    meshes = dict(one=(sharding.make_mesh(devices=jax.devices()[:1]), 2),
                  four=(sharding.make_mesh(), 2),
                  four_wide=(sharding.make_mesh(), 8))
    cls.stats, cls.images = {}, {}
    for name, (mesh, batch) in meshes.items():
      d = pathlib.Path(cls.tmp.name) / name
      d.mkdir()
      cls.stats[name] = collect(d, mesh=mesh, batch_size=batch)
      cls.images[name] = run_lib.dense_images(d, 5)

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def plans(self, name):
    model = setup()[0].model
    return [codec.plan_to_json(calibration.calibrate(
        self.stats[name], model, levels).plan) for levels in _LEVELS]

  def test_same_rows_per_device_give_identical_statistics_and_plan(self):
    # The same per-device program: the rows gathered in global order, the
    # padding rows dropped, folded on the host — nothing else may differ.
    one, wide = self.stats["one"], self.stats["four_wide"]
    self.assertEqual((one.num_images, wide.num_images), (5, 5))
    for name in _STATS:
      np.testing.assert_array_equal(getattr(wide, name), getattr(one, name),
                                    err_msg=name)
    self.assertEqual(self.plans("four_wide"), self.plans("one"))
    np.testing.assert_array_equal(self.images["four_wide"],
                                  self.images["one"])

  def test_one_row_per_device_changes_only_float32_rounding(self):
    # XLA's CPU dots round a row differently with another number of rows
    # multiplied at once (a plain einsum does, on equal rows: 1 vs 4 rows
    # of a 1x32 @ 32x96 product differ by ~1e-6). One device with batch 4
    # differs from batch 2 likewise: the batch per device, not the mesh.
    # Measured here: entropies within 4.8e-7 nats (1 ulp near log(57)),
    # relative 1.7e-7 on samples / entropy_sum / map_sum / hist_sum, and
    # 8.3e-6 on the layer ratios (sigma1 / sigma2 ~ 400 of nearly rank-1
    # maps amplifies an entropy's relative error by up to the ratio).
    one, four = self.stats["one"], self.stats["four"]
    np.testing.assert_array_equal(self.images["four"], self.images["one"])
    self.assertEqual(self.plans("four"), self.plans("one"))
    # Counts move only for a token within an ulp of a bin edge (histogram)
    # or of its scale's mean entropy (rho): none on these seeds.
    for name in ("hist_count", "rho_sum"):
      np.testing.assert_array_equal(getattr(four, name), getattr(one, name),
                                    err_msg=name)
    for name in ("samples", "entropy_sum", "map_sum", "hist_sum"):
      np.testing.assert_allclose(getattr(four, name), getattr(one, name),
                                 rtol=1e-6, atol=0, err_msg=name)
    np.testing.assert_allclose(four.ratios, one.ratios, rtol=1e-4, atol=0)

  def test_budget_search_generates_on_the_mesh(self):
    sampler, params, vae, cond = setup()
    mesh = sharding.make_mesh()
    evaluate = budget.ssim_evaluator(sampler, params, vae, cond,
                                     self.images["one"], mesh=mesh, **RUN)
    with mock.patch.object(runner, "generate_images",
                           wraps=runner.generate_images) as gen:
      self.assertEqual(evaluate(plan_lib.dense_plan(sampler.model)), 1.0)
    self.assertIs(gen.call_args.kwargs["mesh"], mesh)

  def test_a_nan_stops_the_run_and_keeps_the_saved_batches(self):
    sampler, params, vae, cond = setup()
    text = cond.text.copy()
    text[4, 0, 0] = np.nan  # image 4: the second call of 4 rows
    bad = conditions_lib.Conditions(text=text, text_mask=cond.text_mask)
    with tempfile.TemporaryDirectory() as d:
      with self.assertRaisesRegex(
          runner.NonFiniteError, r"non-finite values .* batch 1, .* the 4 "
          r"images before it stay saved in calibration_state\.npz"):
        run_lib.collect(sampler, params, vae, bad, pathlib.Path(d),
                        rep_side=6, mesh=sharding.make_mesh(), **RUN)
      saved = run_lib.stats_lib.EntropyStatistics.load(
          pathlib.Path(d) / run_lib.STATE)
      self.assertEqual(saved.num_images, 4)
      self.assertLen(list((pathlib.Path(d) / run_lib.DENSE_DIR).iterdir()),
                     4)


if __name__ == "__main__":
  absltest.main()
