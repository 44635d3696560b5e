"""Plans side by side: same seeds, scored against dense (issue 13, item 6).

The application behind `experiments/evaluate.py`. Every plan generates the
same conditions with the same seed through the one generate runner
(`sampling.runner.generate_images`: image j is drawn with
fold_in(key(seed), j)), so image j of a plan and image j of dense differ
only by the plan. Each plan is then scored against dense
(`metrics.fidelity`: SSIM, PSNR, LPIPS, fd_alexnet), costed (analytic FLOPs,
`toprovar_jax.flops`; per image from the run when its Output reports
`flops_per_image`, as per-image plan choices do) and timed. On a mesh
(SPEC §10) static plans run sharded; per-image plans run unsharded (their
prefix / suffix programs have no sharded form), and each plan's record
says which.

  parse_plan_specs   '--plans' text -> specs, dense first
  read_prompts       a prompts file -> its non-blank lines
  make_conditions    those lines -> Conditions (labels for VAR models)
  PlanGenerator      one plan's way of making images + its analytic FLOPs
  resolve_generator  the one resolver: static specs here, per-image
                     (dynamic) specs handed to the caller's `dynamic`
  resolve_generators every spec of a run (plan names must differ)
  evaluate_plans     generate every plan, score it against dense
  results_record, markdown_table, frontier_image, grid_image: the outputs
  captions           per sample, its caption or class id

Latency is seconds per image of the generation calls (transformer and
decode, device-synchronised) after the ahead-of-time compile, which is
timed apart (`compile_s`): what a user waits per image once the program is
built. Padding rows of the last batch are included in the time.

Dimension letters: P plans, N images, H, W image size.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from absl import logging
import jax
import numpy as np

from toprovar_jax import flops as flops_lib
from toprovar_jax import sharding
from toprovar_jax.metrics import fidelity as fidelity_lib
from toprovar_jax.metrics import figures
from toprovar_jax.metrics import scatter
from toprovar_jax.models import config as config_lib
from toprovar_jax.sampling import conditions as conditions_lib
from toprovar_jax.sampling import runner
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.sparsity import baselines
from toprovar_jax.sparsity import named
from toprovar_jax.sparsity import plan as plan_lib

REFERENCE = "dense"
# Specs whose plan is chosen per image at run time (a classifier or the
# image's own entropy at a decision scale): no single static plan.
# The same specs as `pipeline.generator_from_spec`: the bare names take the
# model's shipped decision, NAME:PATH a file.
DYNAMIC_SPECS = ("skipvar", "adaptive")
DYNAMIC_PREFIXES = ("skipvar:", "adaptive:")
FD_NOTE = ("fd_alexnet: Frechet distance between the Gaussian fits of the "
           "plan's and dense's LPIPS AlexNet features (5 unit-normalised "
           "taps, position-averaged, 1152-d); NOT FID and not comparable to "
           "published FID; a biased small-sample estimate (covariance rank "
           "<= N-1), comparable only between plans on the same N images")
PSNR_NOTE = ("psnr: dB of the mean squared error over all images vs dense "
             "(peak 255); null = +inf (every image identical to dense)")
MESH_NOTE = ("mesh: the device mesh of the run ({'data': N}: rows split "
             "over N devices); a plan's own mesh is the one it ran on, null "
             "= unsharded on one device, as per-image plans (skipvar, "
             "adaptive:) always run")
LATENCY_NOTE = ("latency_s: seconds per image of the generate + decode "
                "calls after the ahead-of-time compile (compile_s, timed "
                "apart); flop_speedup: analytic transformer FLOPs of dense / "
                "the plan's mean per image (CFG included, decode excluded)")


def _fail(field: str, message: str):
  raise ValueError(f"{field}: {message}")


def is_dynamic(spec: str) -> bool:
  """Whether a spec chooses its plan per image ('skipvar', 'adaptive',
  'skipvar:PATH', 'adaptive:PATH')."""
  return spec in DYNAMIC_SPECS or spec.startswith(DYNAMIC_PREFIXES)


def parse_plan_specs(text: str) -> Tuple[str, ...]:
  """Comma-separated plan specs, dense first (added when not listed).

  Raises:
    ValueError: no spec, or a spec listed twice (names '--plans').
  """
  specs = [p.strip() for p in (text or "").split(",") if p.strip()]
  if not specs:
    _fail("--plans", "lists no plan; e.g. --plans=dense,fastvar,PATH.json")
  for i, spec in enumerate(specs):
    if spec in specs[:i]:
      _fail("--plans", f"plan {spec!r} is listed twice")
  if REFERENCE in specs:
    specs.remove(REFERENCE)
  return (REFERENCE, *specs)


def read_prompts(path: str) -> Tuple[str, ...]:
  """The non-blank lines of a UTF-8 prompts file, stripped.

  Raises:
    ValueError: unreadable file or no prompt in it (names '--prompts').
  """
  return conditions_lib.read_prompts_file(path, field="--prompts")


def make_conditions(model: config_lib.TransformerConfig,
                    lines: Sequence[str], *, num_samples: int,
                    text_len: int) -> conditions_lib.Conditions:
  """Conditions of the prompts file: class ids (VAR) or captions.

  Raises:
    ValueError: a VAR line that is not an integer class id, or an invalid
      condition (names '--prompts' and the line).
  """
  if model.style == "var":
    labels = []
    for i, line in enumerate(lines):
      try:
        labels.append(int(line))
      except ValueError:
        _fail("--prompts", f"line {i + 1}: {line!r} is not a class id "
              f"(the {model.name} model takes integer labels)")
    kwargs = dict(labels=labels)
  else:
    kwargs = dict(prompts=lines)
  try:
    return conditions_lib.make_conditions(
        model, num_samples=num_samples, text_len=text_len, **kwargs)
  except ValueError as e:  # 'config.sampling.labels[i]: ...' -> 'line i+1'
    message = re.sub(r"config\.sampling\.(labels|prompts)\[(\d+)\]",
                     lambda m: f"line {int(m.group(2)) + 1}", str(e))
    raise ValueError(f"--prompts: {message}") from None


@dataclasses.dataclass(frozen=True, eq=False)
class PlanGenerator:
  """One plan's way of making images.

  Attributes:
    spec: the plan spec as listed in '--plans'.
    name: the plan's name (grid rows, results).
    run: run(params, vae_params, conditions, *, seed, batch_size,
      cfg_scale, tau, mesh) -> `runner.Output` (image j from
      fold_in(key(seed), j); mesh as `runner.generate_images`'). An Output
      with a `flops_per_image` attribute ((N,) or scalar) gives the FLOPs
      per image; else `flops` is used.
    flops: analytic transformer FLOPs per image, or None when only the run
      knows them (per-image plans).
  """
  spec: str
  name: str
  run: Callable[..., runner.Output]
  flops: Optional[float]


def static_plan(spec: str, model: config_lib.TransformerConfig
                ) -> plan_lib.SparsityPlan:
  """'dense', 'fastvar', a named plan, a JSON path or a static SkipVAR
  action 'skipvar_skipK[_uncondS]' -> a validated plan (PlanError)."""
  return (baselines.skipvar_action_plan(spec, model)
          or named.load_plan(spec, model))


def static_generator(spec: str, base: sampler_lib.Sampler, *,
                     text_tokens: int = 0) -> PlanGenerator:
  """The generator of a static plan: `base` with that plan, through
  `runner.generate_images`. text_tokens: T for the FLOP count (0 = the
  flops module's default)."""
  plan = static_plan(spec, base.model)
  sampler = dataclasses.replace(base, plan=plan)
  kwargs = dict(text_tokens=text_tokens) if text_tokens else {}

  def run(params, vae_params, conditions, **kw):
    return runner.generate_images(sampler, params, vae_params, conditions,
                                  **kwargs, **kw)
  return PlanGenerator(spec=spec, name=plan.name, run=run,
                       flops=flops_lib.plan_flops(plan, base.model,
                                                  **kwargs).total)


def resolve_generator(spec: str, base: sampler_lib.Sampler, *,
                      text_tokens: int = 0,
                      dynamic: Optional[Callable[[str], PlanGenerator]] = None
                      ) -> PlanGenerator:
  """The one resolver of a plan spec.

  Static specs resolve here (`static_generator`); per-image specs
  ('skipvar', 'adaptive:PATH') go to `dynamic(spec)`, the caller's single
  hand-off (e.g. the config's `pipeline.generator_from_spec`).

  Raises:
    ValueError / PlanError: an unknown or invalid plan, or a per-image spec
      with no `dynamic` (names '--plans').
  """
  if is_dynamic(spec):
    if dynamic is None:
      _fail("--plans", f"{spec!r} chooses its plan per image; this build "
            "has no generator for per-image plans")
    return dynamic(spec)
  try:
    return static_generator(spec, base, text_tokens=text_tokens)
  except plan_lib.PlanError as e:
    raise plan_lib.PlanError(f"--plans: {spec!r}: {e}") from None


def resolve_generators(specs: Sequence[str], base: sampler_lib.Sampler, *,
                       text_tokens: int = 0,
                       dynamic: Optional[Callable[[str], PlanGenerator]] = None
                       ) -> Tuple[PlanGenerator, ...]:
  """`resolve_generator` of every spec; plan names must differ (they label
  the rows). Cheap: plans are validated, nothing is compiled."""
  gens = tuple(resolve_generator(s, base, text_tokens=text_tokens,
                                 dynamic=dynamic) for s in specs)
  names = [g.name for g in gens]
  for i, name in enumerate(names):
    if name in names[:i]:
      _fail("--plans", f"{specs[names.index(name)]!r} and {specs[i]!r} are "
            f"both named {name!r}")
  return gens


@dataclasses.dataclass(frozen=True, eq=False)
class PlanResult:
  """One plan's images, costs and fidelity to dense."""
  generator: PlanGenerator
  output: runner.Output
  flops_per_image: float
  dense_flops: float
  scores: Dict[str, Any]

  @property
  def flop_speedup(self) -> float:
    return self.dense_flops / self.flops_per_image

  @property
  def latency_s(self) -> float:
    t = self.output.timings
    n = len(self.output.images)
    return (t.get("generate_s", 0.0) + t.get("decode_s", 0.0)) / n

  @property
  def compile_s(self) -> float:
    t = self.output.timings
    return sum(v for k, v in t.items() if k.startswith("compile"))


def _flops_per_image(gen: PlanGenerator, output: runner.Output) -> float:
  per_image = getattr(output, "flops_per_image", None)
  if per_image is not None:
    return float(np.mean(np.asarray(per_image, np.float64)))
  if gen.flops is None:
    raise ValueError(f"--plans: {gen.spec!r}: its run reports no "
                     "flops_per_image and it has no analytic FLOPs")
  return float(gen.flops)


def evaluate_plans(generators: Sequence[PlanGenerator], params, vae_params,
                   conditions: conditions_lib.Conditions, *, seed: int,
                   batch_size: int, cfg_scale: float, tau: float,
                   lpips_params, mesh: Optional[jax.sharding.Mesh] = None
                   ) -> Tuple[PlanResult, ...]:
  """Generates with every plan (same seed and conditions) and scores it.

  Args:
    generators: P generators, dense first (the reference of every score
      and of the FLOP reduction).
    params, vae_params: model weights.
    conditions: the N conditions.
    seed, batch_size, cfg_scale, tau: as for `runner.generate_images`.
    lpips_params: `metrics.lpips.load_params()`.
    mesh: static plans run sharded on it; per-image plans (`is_dynamic`:
      prefix / suffix programs, which `runner.generate_images` runs only
      unsharded) get None, so they run on one device instead of failing
      the evaluation (their record's mesh is null).

  Returns:
    P PlanResults in the order of `generators`.
  """
  if not generators or generators[0].spec != REFERENCE:
    raise ValueError("evaluate_plans: the first generator must be dense")
  results, reference, dense_flops = [], None, None
  for gen in generators:
    logging.info("Plan %r (%s): %d images", gen.name, gen.spec,
                 conditions.num_samples)
    output = gen.run(params, vae_params, conditions, seed=seed,
                     batch_size=batch_size, cfg_scale=cfg_scale, tau=tau,
                     mesh=None if is_dynamic(gen.spec) else mesh)
    fl = _flops_per_image(gen, output)
    if reference is None:
      reference, dense_flops = output.images, fl
    scores = fidelity_lib.fidelity(lpips_params, output.images, reference)
    results.append(PlanResult(generator=gen, output=output,
                              flops_per_image=fl, dense_flops=dense_flops,
                              scores=scores))
    logging.info("Plan %r: %.2fx fewer FLOPs, SSIM %.4f, LPIPS %.4f, "
                 "%.3f s/image", gen.name, results[-1].flop_speedup,
                 scores["ssim"], scores["lpips"], results[-1].latency_s)
  return tuple(results)


def _plan_record(r: PlanResult) -> Dict[str, Any]:
  s = r.scores
  return dict(
      name=r.generator.name, spec=r.generator.spec,
      flop_speedup=r.flop_speedup, flops_per_image=r.flops_per_image,
      ssim=s["ssim"], psnr=s["psnr"], lpips=s["lpips"],
      fd_alexnet=s["fd_alexnet"], latency_s=r.latency_s,
      compile_s=r.compile_s, identical_images=s["identical_images"],
      per_image_ssim=s["per_image_ssim"],
      per_image_lpips=s["per_image_lpips"],
      mesh=r.output.mesh, timings=dict(r.output.timings))


def captions(conditions: conditions_lib.Conditions) -> Tuple[str, ...]:
  """Per sample, its caption (text models) or class id as text (VAR)."""
  if conditions.labels is None:
    return tuple(conditions.prompts)
  return tuple(str(int(x)) for x in conditions.labels)


def results_record(results: Sequence[PlanResult], *, config: Dict[str, Any],
                   seed: int, prompts_file: str,
                   conditions: conditions_lib.Conditions,
                   batch_size: int, files: Dict[str, str],
                   mesh: Optional[jax.sharding.Mesh] = None,
                   **extra: Any) -> Dict[str, Any]:
  """The JSON-ready results.json (no NaN / Inf: PSNR +inf is null);
  `extra` (JSON types, e.g. where the weights came from) is added.
  "outputs" lists the `files` (sorted), the set `io.publish` writes;
  "mesh" the run's `mesh` ({"data": 4}; null = unsharded), with the
  device and process counts as a generate run's results.json."""
  labels = conditions.labels
  return dict(**extra,
      reference=REFERENCE, config=config, seed=seed,
      image_keys="image j: fold_in(key(seed), j), the same for every plan",
      prompts_file=prompts_file,
      prompts=(list(conditions.prompts) if labels is None
               else [int(x) for x in labels]),
      num_samples=conditions.num_samples, batch_size=batch_size,
      image_shape=list(results[0].output.images.shape[1:]),
      text_features=conditions.text_features or None,
      device=str(jax.devices()[0]), platform=jax.default_backend(),
      mesh=None if mesh is None else sharding.mesh_axes(mesh),
      device_count=jax.device_count(), process_count=jax.process_count(),
      jax_version=jax.__version__,
      compiler_options=runner.compiler_options(),
      plans=[_plan_record(r) for r in results], files=dict(files),
      outputs=sorted(files.values()),
      notes=dict(fd_alexnet=FD_NOTE, psnr=PSNR_NOTE, latency=LATENCY_NOTE,
                 mesh=MESH_NOTE))


def _num(v: Optional[float], fmt: str, none: str = "n/a") -> str:
  return none if v is None else format(v, fmt)


def markdown_table(record: Dict[str, Any]) -> str:
  """results.md: one row per plan, with the device and the notes."""
  lines = [
      f"Plans vs dense: {record['num_samples']} images, seed "
      f"{record['seed']}, {record['platform']} ({record['device']}).", "",
      "| plan | spec | FLOP reduction | SSIM | PSNR (dB) | LPIPS | "
      "fd_alexnet | s / image | compile s |",
      "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
  for p in record["plans"]:
    lines.append(
        f"| {p['name']} | `{p['spec']}` | {p['flop_speedup']:.2f}x | "
        f"{p['ssim']:.4f} | {_num(p['psnr'], '.2f', 'inf')} | "
        f"{p['lpips']:.4f} | {_num(p['fd_alexnet'], '.4f')} | "
        f"{p['latency_s']:.3f} | {p['compile_s']:.1f} |")
  lines += ["", *(f"- {v}" for v in record["notes"].values()), ""]
  return "\n".join(lines)


def frontier_image(record: Dict[str, Any]) -> np.ndarray:
  """frontier.png: SSIM vs FLOP reduction, one labelled point per plan."""
  plans = record["plans"]
  return scatter.scatter_plot(
      [p["flop_speedup"] for p in plans], [p["ssim"] for p in plans],
      [p["name"] for p in plans], x_label="FLOP reduction vs dense (x)",
      y_label="mean SSIM vs dense",
      title=f"{record['num_samples']} images, seed {record['seed']}")


def _row_label(r: PlanResult) -> str:
  psnr = r.scores["psnr"]
  return (f"{r.generator.name}: {r.flop_speedup:.2f}x fewer FLOPs, SSIM "
          f"{r.scores['ssim']:.3f}, PSNR "
          f"{'inf' if psnr is None else format(psnr, '.1f')} dB, LPIPS "
          f"{r.scores['lpips']:.3f}")


def grid_image(results: Sequence[PlanResult],
               conditions: conditions_lib.Conditions, *,
               max_columns: int = 8) -> np.ndarray:
  """grid.png: one row per plan, the first `max_columns` images (the same
  captions and seeds in every row), captions above the columns."""
  if max_columns < 1:
    _fail("grid_image", f"max_columns must be >= 1, got {max_columns}")
  k = min(max_columns, len(results[0].output.images))
  tiles = np.stack([r.output.images[:k] for r in results])
  return figures.table_grid(tiles, [_row_label(r) for r in results],
                            list(captions(conditions)[:k]),
                            label_width=220)
