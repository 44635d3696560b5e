"""What a generate run reports: results.json and the comparison grid.

  results_record   the JSON-ready summary of a run (results.json): model,
                   plans, where the parameters came from, seeds, conditions,
                   files (and "outputs", every file the run wrote beside
                   it), FLOPs, wall times, similarity to the reference plan
  comparison_grid  one labelled row of images per plan (FLOP speedup, PSNR
                   against the reference plan)

Pure: runs in, dicts and arrays out. Writing them is the experiment's
(`toprovar_jax.io.publish`).
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

import jax
import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from toprovar_jax.metrics import figures
from toprovar_jax.metrics import image as image_metrics
from toprovar_jax.sampling import conditions as conditions_lib
from toprovar_jax.sampling import runner
from toprovar_jax.weights import loading


def _plan_label(run: runner.PlanRun, reference: runner.PlanRun) -> str:
  text = f"{run.name}: {run.flops / 1e9:.1f} GFLOP/image"
  if run.flops != run.dense_flops:
    text += f" ({run.dense_flops / run.flops:.2f}x fewer than dense)"
  if run is not reference:
    sim = image_metrics.image_similarity(run.output.images,
                                         reference.output.images)
    psnr = "inf" if sim["psnr_db"] is None else f"{sim['psnr_db']:.1f}"
    text += f", PSNR {psnr} dB vs {reference.name}"
  return text


def comparison_grid(runs: Sequence[runner.PlanRun],
                    column_labels: Sequence[str] = (), *,
                    label_width: int = 200) -> np.ndarray:
  """One row per plan: a text label (plan, FLOP speedup, PSNR), its images.

  Args:
    runs: P PlanRuns with N images each of one size (the first is the
      reference of the PSNR).
    column_labels: N strings written above the columns (e.g. prompts), cut
      to the tile width; () for no header.
    label_width: width of the row-label strip in pixels.

  Returns:
    (H_header + P (S + 2) + 2, label_width + N (S + 2) + 2, 3) uint8.
  """
  rows = np.stack([r.output.images for r in runs])
  grid = figures.captioned_grid(
      rows, [_plan_label(r, runs[0]) for r in runs], label_width=label_width)
  if not column_labels:
    return grid
  # A header strip: one label per column, cut to fit its tile.
  pad, side = 2, rows.shape[2]
  font = ImageFont.load_default()
  height = font.getbbox("Ag")[3] + 6
  header = Image.new("RGB", (grid.shape[1], height), (255, 255, 255))
  draw = ImageDraw.Draw(header)
  for i, text in enumerate(column_labels):
    while text and font.getlength(text) > side:
      text = text[:-1]
    draw.text((label_width + pad + i * (side + pad), 3), text, fill=(0, 0, 0),
              font=font)
  return np.concatenate([np.asarray(header, np.uint8), grid])


def results_record(*, config, runs: Sequence[runner.PlanRun],
                   conditions: conditions_lib.Conditions,
                   source: loading.ParamsSource,
                   init_s: float, files: Sequence[Sequence[str]],
                   grids: Sequence[str], grid: str,
                   outputs: Sequence[str]) -> Dict[str, Any]:
  """The JSON-ready `results.json` of a generate run.

  Top-level keys describe the reference plan (`plan`, `samples`,
  `timings`; a one-plan run has only that one); `plans` holds one record
  per plan: name, spec, FLOPs per image and FLOP speedup vs dense, compile
  and generation wall times, measured generation speedup and image
  similarity vs the reference plan (same seeds and conditions).

  Args:
    config: the generation config.
    runs: from `runner.run_plans`, reference first.
    conditions: the run's conditions.
    source: from `weights.loading.load_or_init`.
    init_s: seconds spent loading / initialising parameters.
    files: per plan, the N sample file names written.
    grids: per plan, its grid file name.
    grid: the run's main grid (the comparison grid with several plans).
    outputs: every file the run writes beside results.json (samples, grids,
      config.json): recorded sorted as "outputs", which `io.publish` checks
      and the next --overwrite run removes.

  Returns:
    A dict of JSON types only (no NaN / Inf).
  """
  ref = runs[0]
  s = config.sampling
  images = ref.output.images
  samples = []
  for i, name in enumerate(files[0]):
    # Sample i's noise is image_keys(seed, [i]) (sampling.runner), wherever
    # it ran (batch, row).
    sample = dict(file=name, seed=ref.output.seed, index=i,
                  batch=ref.output.batches[i], row=ref.output.rows[i])
    if conditions.labels is not None:
      sample["label"] = int(conditions.labels[i])
    else:
      sample.update(prompt=conditions.prompts[i],
                    text_tokens=conditions.text_lengths[i],
                    truncated=conditions.truncated[i])
    samples.append(sample)
  plans = []
  for run, run_files, run_grid in zip(runs, files, grids):
    t = run.output.timings
    plans.append(dict(
        name=run.name, spec=run.spec, files=list(run_files), grid=run_grid,
        flops_per_image=run.flops,
        plan_per_image=list(run.output.plan_per_image or ()),
        flop_speedup_vs_dense=run.dense_flops / run.flops,
        timings=dict(t),
        generate_speedup_vs_reference=(
            ref.output.timings["generate_s"] / t["generate_s"]
            if t["generate_s"] > 0 else None),
        similarity_to_reference=(
            None if run is ref else dict(
                reference=ref.name,
                **image_metrics.image_similarity(run.output.images,
                                                 images)))))
  return dict(
      model=ref.sampler.model.name, style=ref.sampler.model.style,
      plan=ref.name, plan_spec=ref.spec,
      params_source=source.transformer, tokenizer_source=source.tokenizer,
      params_step=source.transformer_step,
      tokenizer_step=source.tokenizer_step,
      text_features=conditions.text_features or None,
      image_shape=list(images.shape[1:]),
      schedule=[list(hw) for hw in ref.sampler.model.schedule],
      num_samples=conditions.num_samples,
      batch_size=runner.images_per_call(s.batch_size, conditions.num_samples),
      cfg_scale=s.cfg_scale, tau=s.tau, top_k=s.top_k, top_p=s.top_p,
      seeds=[ref.output.seed],
      labels=([int(x) for x in conditions.labels]
              if conditions.labels is not None else None),
      prompts=list(conditions.prompts) or None,
      samples=samples, grid=grid, outputs=sorted(outputs),
      timings=dict(init_or_load_s=init_s, **ref.output.timings),
      plans=plans,
      flops_note="analytic transformer FLOPs per image with CFG "
                 "(toprovar_jax.flops); tokenizer decode not counted",
      compiler_options=runner.compiler_options(),
      mesh=ref.output.mesh, device_count=jax.device_count(),
      process_count=jax.process_count(),
      devices=[str(d) for d in jax.devices()], jax_version=jax.__version__)
