"""Training the per-image decisions: SkipVAR's classifier, adaptive thresholds.

Both start from the same measurement (`outcomes`): on training conditions,
the prefix runs once per batch and every candidate suffix plan (and dense,
the reference) finishes every image, with the seeds `generate` uses; each
image gets its policy features (HF_Diff / HF_Ratio, or ρ_s) and the SSIM
of every plan's image against its dense image. Then:

  train_skipvar       labels = the cheapest action with SSIM >= target
                      (SkipVAR's rule), a logistic regression on the two
                      features (`sparsity.classifier`).
  calibrate_adaptive  the plan order and thresholds on the mean ρ with the
                      best mean SSIM within a FLOP budget
                      (`sparsity.adaptive.calibrate`), against the best
                      single plan of the family within the same budget.

Dimension letters: N training images, K plans, F features.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Sequence, Tuple

import numpy as np

from toprovar_jax import flops as flops_lib
from toprovar_jax.metrics import image as image_metrics
from toprovar_jax.sampling import branching
from toprovar_jax.sampling import conditions as conditions_lib
from toprovar_jax.sampling import policies
from toprovar_jax.sampling import runner
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.sparsity import adaptive as adaptive_lib
from toprovar_jax.sparsity import classifier as classifier_lib
from toprovar_jax.sparsity import plan as plan_lib


@dataclasses.dataclass(frozen=True, eq=False)
class Outcomes:
  """Every plan on every training image.

  Attributes:
    features: (N, F) the policy's features.
    ssim: (K, N) SSIM of plan k's image vs the dense image (1 = same).
    flops: (K,) analytic FLOPs per image of each plan.
    dense_flops: FLOPs per image of the dense plan.
  """
  features: np.ndarray
  ssim: np.ndarray
  flops: np.ndarray
  dense_flops: float


def _same_run(a: plan_lib.SparsityPlan, b: plan_lib.SparsityPlan) -> bool:
  return a.scales == b.scales and a.num_generated == b.num_generated


def outcomes(br: branching.Branching, params, vae_params,
             conditions: conditions_lib.Conditions, *, seed: int,
             batch_size: int, cfg_scale: float, tau: float,
             options: Any = runner.CPU_DEFAULT, text_tokens: int = 0
             ) -> Outcomes:
  """Features, SSIM vs dense and FLOPs of every suffix plan of `br`.

  options: XLA compiler options; default `runner.compiler_options()` (on
  CPU the fast compile: a training run of ~64 images is compile-bound).
  """
  if options is runner.CPU_DEFAULT:
    options = runner.compiler_options()
  dense = plan_lib.dense_plan(br.model)
  ref = next((k for k, p in enumerate(br.plans) if _same_run(p, dense)),
             None)
  run_br = br
  if ref is None:  # add dense as one more suffix (it shares the prefix)
    run_br = dataclasses.replace(br, suffixes=br.suffixes + (
        dataclasses.replace(br.suffixes[0], plan=dense),))
    ref = len(br.plans)
  feats, images = run_br.outcomes(
      params, vae_params, conditions, seed=seed, batch_size=batch_size,
      cfg_scale=cfg_scale, tau=tau, options=options)
  dense_img = images[ref].astype(np.float32) / 255.0
  ssim = np.stack([np.asarray(image_metrics.ssim(
      images[k].astype(np.float32) / 255.0, dense_img), np.float64)
                   for k in range(len(br.plans))])
  kw = dict(text_tokens=text_tokens) if text_tokens else {}
  return Outcomes(features=feats, ssim=ssim, flops=br.plan_flops(text_tokens),
                  dense_flops=flops_lib.dense_flops(br.model, **kw).total)


def _plan_rows(br, out: Outcomes) -> list:
  return [dict(name=p.name, mean_ssim=float(out.ssim[k].mean()),
               flops=float(out.flops[k]),
               flop_speedup=float(out.dense_flops / out.flops[k]))
          for k, p in enumerate(br.plans)]


def _policy_row(out: Outcomes, pick: np.ndarray) -> Dict[str, float]:
  mean_flops = float(out.flops[pick].mean())
  return dict(mean_ssim=float(out.ssim[pick, np.arange(len(pick))].mean()),
              mean_flops=mean_flops,
              flop_speedup=float(out.dense_flops / mean_flops))


def train_skipvar(base: sampler_lib.Sampler, params, vae_params,
                  conditions: conditions_lib.Conditions, *,
                  classes: Sequence[str], decision_scale: int,
                  feature_scale: int, ssim_target: float,
                  freq_ratio: float = 0.4, c: float = 1.0,
                  **run_kw) -> Tuple[classifier_lib.SkipVarSpec,
                                     Dict[str, Any]]:
  """SkipVAR's classifier for `base`'s model on these conditions.

  Args:
    base: the Sampler whose model, sampling and execution the actions use.
    classes: action plan names ('skipvar_skipK[_uncondS]' or plan specs).
    decision_scale, feature_scale, freq_ratio: see `SkipVarSpec`.
    ssim_target: an action is good enough for an image when its SSIM vs
      dense reaches this.
    c: inverse L2 strength of the logistic regression.
    run_kw: seed, batch_size, cfg_scale, tau (, options, text_tokens).

  Returns:
    (the spec, a JSON-ready training record).
  """
  k = len(classes)
  untrained = classifier_lib.SkipVarSpec(
      model=base.model.name, decision_scale=decision_scale,
      feature_scale=feature_scale, freq_ratio=freq_ratio,
      classes=tuple(classes), classifier=classifier_lib.Logistic(
          mean=(0.0, 0.0), scale=(1.0, 1.0), weights=((0.0,) * k,) * 2,
          bias=(0.0,) * k))
  br = policies.skipvar_branching(base, untrained)
  out = outcomes(br, params, vae_params, conditions, **run_kw)
  labels = classifier_lib.labels_from_ssim(out.ssim, out.flops, ssim_target)
  model = classifier_lib.fit_logistic(out.features, labels, k, c=c)
  spec = dataclasses.replace(untrained, classifier=model)
  pred = model.predict(out.features)
  record = dict(
      num_images=int(len(labels)), ssim_target=ssim_target, c=c,
      label_counts=np.bincount(labels, minlength=k).tolist(),
      train_accuracy=float(np.mean(pred == labels)),
      plans=_plan_rows(br, out), oracle=_policy_row(out, labels),
      classifier=_policy_row(out, pred),
      feature_mean=out.features.mean(axis=0).tolist(),
      feature_std=out.features.std(axis=0).tolist())
  return spec, record


def calibrate_adaptive(base: sampler_lib.Sampler, params, vae_params,
                       conditions: conditions_lib.Conditions, *, name: str,
                       plans: Sequence[plan_lib.SparsityPlan],
                       decision_scale: int,
                       statistic_scales: Sequence[int], budget_flops: float,
                       **run_kw) -> Tuple[adaptive_lib.AdaptiveSpec,
                                          Dict[str, Any]]:
  """Adaptive ToProVAR's order and thresholds for `plans`.

  Args:
    base: the Sampler whose model, sampling and execution the plans use.
    name: the method's name.
    plans: 2-4 plans agreeing on scales [0, decision_scale).
    statistic_scales: scales (< decision_scale) of the statistic.
    budget_flops: mean FLOPs per image allowed.
    run_kw: seed, batch_size, cfg_scale, tau (, options, text_tokens).

  Returns:
    (the spec, a JSON-ready record: every plan's SSIM and FLOPs, the
    chosen assignment, and the best single plan within the budget).
  """
  plans = tuple(plans)
  spec = adaptive_lib.AdaptiveSpec(
      name=name, decision_scale=decision_scale,
      statistic_scales=tuple(statistic_scales), plans=plans,
      thresholds=(0.0,) * (len(plans) - 1))
  br = policies.adaptive_branching(base, spec)
  out = outcomes(br, params, vae_params, conditions, **run_kw)
  stat = out.features.mean(axis=1)
  cal = adaptive_lib.calibrate(stat, out.ssim, out.flops, budget=budget_flops)
  spec = dataclasses.replace(
      spec, plans=tuple(plans[i] for i in cal["order"]),
      thresholds=tuple(cal["thresholds"]))
  pick = np.asarray(cal["order"])[spec.choose(stat)]
  corr = [float(np.corrcoef(stat, out.ssim[k])[0, 1])
          if out.ssim[k].std() > 0 and stat.std() > 0 else None
          for k in range(len(plans))]
  record = dict(
      num_images=int(len(stat)), budget_flops=budget_flops,
      plans=_plan_rows(br, out), calibration=cal,
      adaptive=_policy_row(out, pick),
      statistic=dict(mean=float(stat.mean()), std=float(stat.std()),
                     corr_with_ssim=corr),
      # Per image (recalibrating at another budget needs no new run).
      per_image=dict(statistic=stat.tolist(), ssim=out.ssim.tolist()))
  return spec, record


def provenance(source, prompts_file: str, prompts: Sequence[str], *,
               seed: int, seconds: float) -> Dict[str, Any]:
  """What a training record says about its inputs (JSON types)."""
  return dict(seconds=seconds, seed=seed, prompts_file=prompts_file,
              num_prompts=len(prompts), params_source=source.transformer,
              params_step=source.transformer_step,
              random_init=bool(source.random_init))
