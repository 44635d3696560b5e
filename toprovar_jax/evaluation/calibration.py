"""A calibration run: dense generation with entropy -> statistics -> plan.

`collect` generates the calibration images densely through the pieces of
`sampling.runner` (per-image keys `image_keys(seed, j)`, `batch_inputs`,
the AOT `compile_generate`, `decode`) with
`SamplingConfig(record_entropy=True)`, folds every image's per-(scale,
layer, token) entropy into a `sparsity.statistics.EntropyStatistics` and,
after every batch, rewrites the statistics atomically
(`calibration_state.npz`) and writes the batch's dense images
(`dense/NNNN.png`, the budget search's references). A run that stops
between two batches resumes from its last saved image; its images are the
same (an image's noise depends on its index only), so the statistics equal
an uninterrupted run's. `write_report` writes plan.json,
calibration.json and the four figures.

On a mesh (SPEC §10) the batch is generated sharded as
`runner.generate_images` does, and every batch's images and per-layer
entropies come back to the host in global row order, the padding rows
dropped (`sharding.gather_rows`); the statistics are then folded on the
host in float64, image by image, so they are the same whatever the device
count — up to how XLA's CPU kernels round a row: a dot's result depends on
how many rows it multiplies at once (rows per device), by ~1 float32 ulp
in the entropies. Runs with the same rows per device are bit for bit equal
(tests/evaluation/calibration_test.py measures both).

Dimension letters: N images, B batch, L layers, H, W image size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import time
from typing import Any, Callable, Dict, Optional

from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np
from PIL import Image

from toprovar_jax import io
from toprovar_jax import sharding
from toprovar_jax.metrics import charts
from toprovar_jax.ops import resample
from toprovar_jax.sampling import conditions as conditions_lib
from toprovar_jax.sampling import runner
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.sparsity import calibration as calibration_lib
from toprovar_jax.sparsity import codec
from toprovar_jax.sparsity import statistics as stats_lib

STATE = "calibration_state.npz"
DENSE_DIR = "dense"


def read_conditions(path: str, model, *, num_images: int, text_len: int
                    ) -> conditions_lib.Conditions:
  """Conditions from a file of one prompt (Infinity) or class label (VAR)
  per line (blank lines skipped), cycled to `num_images` (0 = one each)."""
  lines = conditions_lib.read_prompts_file(path, field="prompts")
  if model.style == "var":
    try:
      labels = [int(v) for v in lines]
    except ValueError as e:
      raise ValueError(f"prompts: {path!r} must hold one integer class label "
                       f"per line for {model.name}: {e}") from None
    return conditions_lib.make_conditions(model, labels=labels,
                                          num_samples=num_images)
  return conditions_lib.make_conditions(model, prompts=lines,
                                        num_samples=num_images,
                                        text_len=text_len)


def entropy_sampler(sampler: sampler_lib.Sampler) -> sampler_lib.Sampler:
  """The dense plan of `sampler`'s model with every F layer's entropy
  recorded (what a calibration image is generated with)."""
  return dataclasses.replace(
      sampler, plan=None,
      sampling=dataclasses.replace(sampler.sampling, record_entropy=True))


def fingerprint(sampler: sampler_lib.Sampler,
                conditions: conditions_lib.Conditions, *, seed: int,
                cfg_scale: float, tau: float, rep_side: int) -> str:
  """What the statistics depend on: model, conditions, seed, guidance."""
  h = hashlib.sha256()
  for arr in (conditions.labels, conditions.text, conditions.text_mask):
    if arr is not None:
      h.update(np.ascontiguousarray(arr).tobytes())
  return (f"model={sampler.model.name} images={conditions.num_samples} "
          f"seed={seed} cfg={cfg_scale:g} tau={tau:g} rep_side={rep_side} "
          f"dtype={sampler.sampling.dtype} conditions={h.hexdigest()[:16]}")


def collect(sampler: sampler_lib.Sampler, params, vae_params,
            conditions: conditions_lib.Conditions, workdir: pathlib.Path, *,
            seed: int, batch_size: int, cfg_scale: float, tau: float,
            rep_side: int = 12, num_samples: int = 4,
            on_batch: Optional[Callable[[int], None]] = None,
            fresh: bool = False, mesh: Optional[Mesh] = None
            ) -> stats_lib.EntropyStatistics:
  """Statistics of `conditions.num_samples` dense images, resumable.

  Args:
    sampler: any Sampler of the model (its plan is replaced by dense, its
      sampling rules kept, entropy recorded).
    params, vae_params: the weights.
    conditions: the calibration prompts / labels, one image each.
    workdir: where the state and the dense images are saved.
    seed, cfg_scale, tau: as `runner.generate_images`.
    batch_size: images per generate call; 0 = all in one
      (`runner.images_per_call`).
    rep_side: the layer level's representative scale (side nearest).
    num_samples: images whose full entropy is kept (kept-token figure).
    on_batch: called with the batch index after each batch is saved.
    fresh: start again, ignoring (then replacing) a saved state.
    mesh: generate sharded on it as `runner.generate_images` does (rows
      over its data axis, `batch_size` rounded up to a multiple of it);
      None = the unsharded program. The statistics do not depend on it
      beyond float32 rounding of XLA's kernels (module docstring).

  Returns:
    The statistics of all N images.

  Raises:
    ValueError: a saved state of another run (fingerprint), batch_size < 0.
    runner.NonFiniteError: a batch's layers or logits were NaN / Inf (the
      batches before it stay saved).
  """
  n = conditions.num_samples
  batch_size = runner.images_per_call(batch_size, n)
  sampler = entropy_sampler(sampler)
  model = sampler.model
  fp = fingerprint(sampler, conditions, seed=seed, cfg_scale=cfg_scale,
                   tau=tau, rep_side=rep_side)
  state_path = workdir / STATE
  stats = (stats_lib.EntropyStatistics.load(state_path)
           if state_path.exists() and not fresh else None)
  stats_lib.check_fingerprint(stats, fp)
  if stats is None:
    stats = stats_lib.EntropyStatistics(
        schedule=model.schedule, num_layers=model.depth,
        rep_scale=stats_lib.find_rep_scale(model.schedule, rep_side),
        num_samples=num_samples, fingerprint=fp)
  start = stats.num_images
  if start:
    logging.info("Resuming calibration at image %d of %d", start, n)
  if start >= n:
    return stats
  (workdir / DENSE_DIR).mkdir(exist_ok=True)
  params, vae_params, batch_size, guidance = runner.place_run(
      params, vae_params, batch_size=batch_size, cfg_scale=cfg_scale,
      tau=tau, mesh=mesh)
  vae_arg = vae_params if model.style == "var" else None
  slots = lambda j: range(start + j * batch_size, start + (j + 1) * batch_size)
  inputs = lambda j: runner.batch_inputs(sampler, conditions, slots(j),
                                         seed=seed, mesh=mesh)
  compiled = runner.compile_generate(sampler, params, vae_arg, *inputs(0),
                                     options=runner.compiler_options(),
                                     mesh=mesh)
  num_batches = -(-(n - start) // batch_size)
  t0 = time.perf_counter()
  for j in range(num_batches):
    keys, cond = inputs(j)
    out = compiled.fn(params, vae_arg, keys, *guidance, **cond)
    runner.check_finite(sampler, out.finite, batch=j, saved=(
        f"the {stats.num_images} images before it stay saved in {STATE}"
        if stats.num_images else "nothing was saved"))
    rows = min(batch_size, n - stats.num_images)
    # Host copies in global row order, the padding rows of the last batch
    # dropped: the statistics fold the same numbers on any mesh.
    images = sharding.gather_rows(
        runner.decode(sampler, vae_params, out.latent), num_rows=rows)
    stats.add_batch(sharding.gather_rows(out.entropy, axis=1, num_rows=rows),
                    rows)
    for r in range(rows):
      io.write_png_atomic(workdir / DENSE_DIR /
                          f"{stats.num_images - rows + r:04d}.png", images[r])
    io.write_bytes_atomic(state_path, stats.to_bytes())
    done, dt = stats.num_images - start, time.perf_counter() - t0
    logging.info("calibration: %d/%d images, %.2f s/image, ETA %.0f s",
                 stats.num_images, n, dt / done, dt / done * (n - start - done))
    if on_batch is not None:
      on_batch(j)
  return stats


def dense_images(workdir: pathlib.Path, n: int) -> np.ndarray:
  """(n, H, W, 3) uint8: the dense images `collect` saved."""
  return np.stack([np.asarray(Image.open(workdir / DENSE_DIR / f"{i:04d}.png")
                              .convert("RGB")) for i in range(n)])


def kept_masks(stats: stats_lib.EntropyStatistics,
               plan) -> Dict[int, np.ndarray]:
  """Per pruned scale s, (k, h_s, w_s) bool: the tokens the plan keeps on
  the sample images, from the dense run's probe entropies (exact at the
  first pruned scale; later ones depend on the pruned run's own entropy)."""
  offsets = np.cumsum((0,) + stats.tokens_per_scale)
  out = {}
  for s, sp in enumerate(plan.scales):
    if sp.scorer != "entropy" or not len(stats.samples):
      continue
    src = s if sp.entropy_from == "probe" else s - 1
    probe = plan.scales[src].probe_layer
    h, w = stats.schedule[s]
    ent = stats.samples[:, probe, offsets[src]:offsets[src + 1]]
    ent = ent.reshape(len(ent), *stats.schedule[src], 1)
    if src != s:
      ent = np.asarray(resample.area_resize(jnp.asarray(ent, jnp.float32),
                                            (h, w)))
    ent = ent.reshape(len(ent), -1)
    kept = np.argsort(ent, axis=1, kind="stable")[:, :sp.keep]
    mask = np.zeros(ent.shape, bool)
    np.put_along_axis(mask, kept, True, axis=1)
    out[s] = mask.reshape(-1, h, w)
  return out


def read_frontier(workdir: pathlib.Path) -> Optional[Dict[str, Any]]:
  """The workdir's frontier.json (an earlier budget search on the same
  statistics, e.g. of a copied workdir), or None."""
  path = workdir / "frontier.json"
  if not path.exists():
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write_frontier(workdir: pathlib.Path, record: Dict[str, Any]) -> None:
  """frontier.json and frontier.png of a budget search's record."""
  io.write_json_atomic(workdir / "frontier.json", record)
  plans = record["plans"]
  chosen = [i for i, p in enumerate(plans) if p["chosen"]]
  io.write_png_atomic(workdir / "frontier.png", charts.frontier_chart(
      [(p["flop_speedup"], p["ssim"]) for p in plans],
      target=record["target_ssim"], chosen=chosen[0] if chosen else None))


def write_report(workdir: pathlib.Path, stats: stats_lib.EntropyStatistics,
                 cal: calibration_lib.Calibration, *,
                 mesh: Optional[Mesh] = None,
                 extra: Optional[Dict[str, Any]] = None) -> None:
  """plan.json, calibration.json, rho_s / layer_ratio / entropy_maps /
  kept_tokens PNGs (each atomically; calibration.json last).

  calibration.json records the `mesh` this run generated on ({"data": 4};
  null = unsharded) and the device and process counts, as results.json of
  a generate run does.
  """
  io.write_text_atomic(workdir / "plan.json", codec.plan_to_json(cal.plan))
  io.write_png_atomic(workdir / "rho_s.png", charts.rho_chart(
      cal.rho, cal.config.tau, cal.depth_rise, cal.depth_fall, cal.depth))
  io.write_png_atomic(workdir / "layer_ratio.png", charts.layer_ratio_chart(
      cal.ratios, cal.rho_star, cal.global_layers))
  io.write_png_atomic(workdir / "entropy_maps.png", charts.map_grid(
      stats.mean_maps(), [f"layer {l}" + (" G" if l in cal.global_layers
                                          else "")
                          for l in range(stats.num_layers)]))
  masks = kept_masks(stats, cal.plan)
  k = len(stats.samples)
  if k and masks:
    images = dense_images(workdir, k)
    io.write_png_atomic(workdir / "kept_tokens.png", charts.kept_token_grid(
        images, masks))
  record = dict(cal.to_json(), num_images=stats.num_images,
                mean_entropy=stats.mean_entropy().tolist(),
                fingerprint=stats.fingerprint, plan_file="plan.json",
                mesh=None if mesh is None else sharding.mesh_axes(mesh),
                device_count=jax.device_count(),
                process_count=jax.process_count())
  record.update(extra or {})
  io.write_json_atomic(workdir / "calibration.json",
                       json.loads(json.dumps(record, allow_nan=False)))
