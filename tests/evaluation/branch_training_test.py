"""Training the per-image decisions (`evaluation.branch_training`) on the
micro Infinity config (random weights, 4 scales, fp32 CPU)."""

import functools

from absl.testing import absltest

from toprovar_jax import flops as flops_lib
from toprovar_jax import testing
from toprovar_jax.evaluation import branch_training
from toprovar_jax.models import config as config_lib
from toprovar_jax.sampling import conditions as conditions_lib
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.sparsity import baselines
from toprovar_jax.sparsity import plan as plan_lib

# Stride 2: 12x12 images, as large as SSIM's 11x11 window needs.
_TOK = config_lib.BSQConfig(base_ch=32, ch_mult=(1, 1), num_res_blocks=0,
                            codebook_dim=4)


@functools.lru_cache(maxsize=None)
def _setup():
  cfg, params, vae, tok, text, mask = testing.micro_infinity_run(4, stride=2)
  cond = conditions_lib.Conditions(text=text, text_mask=mask)
  base = sampler_lib.Sampler(model=cfg, tokenizer=tok)
  return cfg, params, vae, cond, base


_RUN = dict(seed=0, batch_size=4, cfg_scale=3.0, tau=1.0)


class TrainingTest(absltest.TestCase):

  def test_skipvar_labels_and_classifier(self):
    cfg, params, vae, cond, base = _setup()
    spec, rec = branch_training.train_skipvar(
        base, params, vae, cond, classes=("skipvar_skip0", "skipvar_skip1"),
        decision_scale=2, feature_scale=2, ssim_target=0.5, **_RUN)
    self.assertEqual(spec.classes, ("skipvar_skip0", "skipvar_skip1"))
    self.assertEqual(sum(rec["label_counts"]), 4)
    plans = {p["name"]: p for p in rec["plans"]}
    # skip0 is dense: SSIM 1 against itself.
    self.assertEqual(plans["skipvar_skip0"]["mean_ssim"], 1.0)
    self.assertEqual(plans["skipvar_skip1"]["flops"], flops_lib.plan_flops(
        baselines.skipvar_plan(cfg, skip_scales=1), cfg).total)
    self.assertLess(plans["skipvar_skip1"]["mean_ssim"], 1.0)
    self.assertLen(spec.classifier.mean, 2)

  def test_adaptive_adds_dense_as_the_reference(self):
    cfg, params, vae, cond, base = _setup()
    skip = baselines.skipvar_plan(cfg, skip_scales=1)
    skip2 = baselines.skipvar_plan(cfg, skip_scales=2)
    budget = flops_lib.plan_flops(skip, cfg).total
    # Neither plan is dense: dense runs as one more suffix, the reference.
    spec, rec = branch_training.calibrate_adaptive(
        base, params, vae, cond, name="micro_adaptive",
        plans=(skip, skip2), decision_scale=2, statistic_scales=(1,),
        budget_flops=budget, **_RUN)
    self.assertEqual(spec.name, "micro_adaptive")
    self.assertEqual({p.name for p in spec.plans},
                     {"skipvar_skip1", "skipvar_skip2"})
    self.assertLessEqual(rec["adaptive"]["mean_flops"], budget)
    self.assertLen(rec["plans"], 2)
    for row in rec["plans"]:
      self.assertBetween(row["mean_ssim"], -1.0, 1.0 - 1e-6)
    self.assertEqual(rec["calibration"]["best_static"]["index"], 0)
    self.assertGreaterEqual(rec["adaptive"]["mean_ssim"] + 1e-9,
                            rec["calibration"]["best_static"]["ssim"])
    self.assertEqual(rec["num_images"], 4)
    self.assertIsInstance(spec.plans[0], plan_lib.SparsityPlan)


if __name__ == "__main__":
  absltest.main()
