"""The one generate loop: conditions -> batches -> Sampler.generate -> images.

Every caller that makes images goes through here: `experiments/generate.py`
(via `run_plans`), the emoji evaluation and the benchmark. A run is a list
of N conditions (`sampling.conditions.Conditions`); the runner cuts it into
batches of a static size (the last one padded by repeating its last
condition, the extra images dropped), so the sampler compiles once; seeds,
conditions, guidance and τ are traced. Compilation is ahead of time and
timed apart from the runs.

  image_keys        the seeding rule: image j gets fold_in(key(seed), j)
  batch_inputs      one batch's row keys and condition arrays
  compile_generate  `Sampler.generate` lowered and compiled ahead of time
  place_run         weights, rows per call and guidance placed for a mesh
  check_finite      a batch's NaN / Inf flags -> NonFiniteError
  generate_images   N conditions -> Output (uint8 images, timings)
  decode            a Generation's latent -> uint8 images
  run_plans         generate_images for several plans, same seeds / inputs
  plan_slug         a plan name made safe for file names

Because every image has its own key (`Sampler.generate` draws each row from
its own key only), an image is the same whatever the batch size, the other
images of its batch or the device it runs on. With a `mesh`
(`toprovar_jax.sharding`), rows are split over its `data` axis (the batch
rounded up to a multiple of it, the padding rows dropped), parameters placed
by its rules, and the program is `sharding.generate_program`; without one,
the unsharded `Sampler.generate` on the default device.

Dimension letters: N samples, B batch, H, W image height and width, P plans.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax import flops as flops_lib
from toprovar_jax import sharding
from toprovar_jax.models import bsq_vae
from toprovar_jax.models import vqvae
from toprovar_jax.sampling import conditions as conditions_lib
from toprovar_jax.sampling import inputs
from toprovar_jax.sampling import sampler as sampler_lib

Array = jax.Array


def plan_slug(name: str) -> str:
  """A plan name made safe for file names ([A-Za-z0-9_.-], no leading dot)."""
  slug = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")
  return slug or "plan"


def to_uint8(img: Array) -> Array:
  """[-1, 1] image -> uint8 as torchvision `save_image`: ⌊255·(x+1)/2+½⌋."""
  return jnp.clip(jnp.floor((img + 1.0) * 127.5 + 0.5), 0, 255).astype(
      jnp.uint8)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _decode_uint8(style: str, tokenizer: Any, vae_params, latent: Array):
  if style == "var":
    img = vqvae.VQVAE(tokenizer).apply(vae_params, latent,
                                       method=vqvae.VQVAE.decode)
  else:
    img = bsq_vae.BSQVAE(tokenizer).apply(vae_params, latent,
                                          method=bsq_vae.BSQVAE.decode)
  return to_uint8(img)


def decode(sampler: sampler_lib.Sampler, vae_params, latent: Array) -> Array:
  """Latent of `Sampler.generate` -> (B, H, W, 3) uint8 RGB images.

  VAR: VQVAE decoder of f̂; Infinity: BSQ decoder of the summed codes. Both
  decoders clamp to [-1, 1]; (x + 1) / 2 then maps to [0, 255]. Channels are
  RGB (the official Infinity code flips to BGR for cv2; we do not).
  """
  return _decode_uint8(sampler.model.style, sampler.tokenizer, vae_params,
                       latent)


def image_keys(seed: int, indices: Sequence[int]) -> Array:
  """(len(indices),) typed PRNG keys: image j gets fold_in(key(seed), j).

  j is the image's index in the run's list of samples (prompt x sample,
  padding rows of the last batch included), so an image's noise depends on
  the seed and its index only, never on the batch size. `jax.random.key`
  holds the same threefry bits as the legacy `jax.random.PRNGKey(seed)`.
  """
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
      jax.random.key(seed), jnp.asarray(indices, jnp.uint32))


@dataclasses.dataclass(frozen=True, eq=False)
class Output:
  """Images of one run and how each was made.

  Attributes:
    images: (N, H, W, 3) uint8 RGB.
    seed: the run's seed; sample i was drawn with `image_keys(seed, [i])`.
    batches: per sample, its batch index.
    rows: per sample, its row in the batch (where it ran; its noise does
      not depend on it).
    timings: seconds: compile_generate_s, compile_decode_s (lower + XLA
      compile, once), generate_s (all batches, device-synced), decode_s
      (all batches, including the copy to the host).
    mesh: the mesh's axes ({"data": 4}) or None (unsharded program).
    flops_per_image: (N,) analytic transformer FLOPs of each image
      (`toprovar_jax.flops`; all equal for a static Sampler, per chosen
      suffix plan for a `sampling.branching.Branching`).
    plan_per_image: per image, the name of the plan that made it.
  """
  images: np.ndarray
  seed: int
  batches: Tuple[int, ...]
  rows: Tuple[int, ...]
  timings: Dict[str, float]
  mesh: Optional[Dict[str, int]] = None
  flops_per_image: Optional[np.ndarray] = None
  plan_per_image: Optional[Tuple[str, ...]] = None


def compiler_options() -> Optional[Dict[str, Any]]:
  """The default XLA options of the AOT compiles in `generate_images`.

  On CPU a run is compile-bound: one generation of the emoji model compiles
  for ~35 s at XLA's default optimisation level and runs for ~3-5 s (batch
  6); level 0 without the expensive LLVM passes compiles ~2.5x faster and
  runs at most ~1.5x slower, a net win for a one-shot run of a few
  batches. Other backends keep XLA's defaults (their runs are what is
  measured). Both plans of a comparison use the same options.
  """
  if jax.default_backend() == "cpu":
    return {"xla_backend_optimization_level": 0,
            "xla_llvm_disable_expensive_passes": True}
  return None


# Compiled decoders by (style, tokenizer, latent and params layout, options):
# every plan of a comparison decodes the same latent shape, so the decoder
# compiles once per run, not once per plan.
_DECODERS: Dict[Any, Any] = {}


def _compiled_decoder(sampler: sampler_lib.Sampler, vae_params,
                      latent_spec: jax.ShapeDtypeStruct,
                      options: Optional[Dict[str, Any]]):
  layout = (jax.tree.structure(vae_params),
            tuple((x.shape, str(x.dtype), getattr(x, "sharding", None))
                  for x in jax.tree.leaves(vae_params)))
  key = (sampler.model.style, sampler.tokenizer, latent_spec.shape,
         str(latent_spec.dtype), latent_spec.sharding, layout,
         tuple(sorted((options or {}).items())))
  if key not in _DECODERS:
    _DECODERS[key] = _decode_uint8.lower(
        sampler.model.style, sampler.tokenizer, vae_params,
        latent_spec).compile(compiler_options=options)
  return _DECODERS[key]


def batch_inputs(sampler: sampler_lib.Sampler,
                 conditions: conditions_lib.Conditions,
                 slots: Sequence[int], *, seed: int,
                 mesh: Optional[jax.sharding.Mesh] = None
                 ) -> Tuple[Array, Dict[str, Array]]:
  """(row keys, condition arrays) of one batch.

  Args:
    sampler: the sampler (its style picks labels or text).
    conditions: the run's N conditions.
    slots: the batch's image indices; slots >= N repeat the last condition
      (padding) but keep their own keys.
    seed: the run's seed.
    mesh: split the rows over its `data` axis (None: default device).

  Returns:
    ((B,) keys `image_keys(seed, slots)`, dict of labels (B,) or text
    (B, T, Ct) and text_mask (B, T)), device arrays.
  """
  rows = np.minimum(np.asarray(slots), conditions.num_samples - 1)
  if sampler.model.style == "var":
    cond = dict(labels=conditions.labels[rows])
  else:
    cond = dict(text=conditions.text[rows],
                text_mask=conditions.text_mask[rows])
  if mesh is not None:
    return (sharding.row_keys(seed, slots, mesh),
            {k: sharding.put_rows(v, mesh) for k, v in cond.items()})
  return image_keys(seed, slots), {k: jnp.asarray(v) for k, v in cond.items()}


@dataclasses.dataclass(frozen=True, eq=False)
class CompiledGenerate:
  """`Sampler.generate` compiled ahead of time for one batch layout.

  Call it as `fn(params, vae_params, keys, cfg_scale, tau, **cond)`.
  """
  fn: Any
  lowered: Any
  lower_s: float
  compile_s: float


def compile_generate(sampler: sampler_lib.Sampler, params, vae_params,
                     keys, cond: Dict[str, Any], *,
                     options: Optional[Dict[str, Any]],
                     mesh: Optional[jax.sharding.Mesh] = None
                     ) -> CompiledGenerate:
  """Lowers and compiles `Sampler.generate` for these argument shapes.

  Any argument may be a `jax.ShapeDtypeStruct` (nothing runs: compile-time
  studies on abstract weights). `options`: XLA compiler options (None =
  XLA's defaults; `compiler_options()` is the CPU-friendly choice). With a
  `mesh`, the sharded program (`sharding.generate_program`; arguments placed
  by `batch_inputs(mesh=...)` and `sharding.put_params`).
  """
  t0 = time.perf_counter()
  guidance = (jnp.float32(0), jnp.float32(0))
  if mesh is None:
    lowered = type(sampler).generate.lower(
        sampler, params, vae_params, keys, *guidance, **cond)
  else:
    program = sharding.generate_program(
        sampler, mesh, tuple(sorted(cond)), with_vae=vae_params is not None)
    guidance = sharding.put_replicated(guidance, mesh)
    lowered = program.lower(params, vae_params, keys, *guidance, cond)
  t1 = time.perf_counter()
  fn = lowered.compile(compiler_options=options)
  if mesh is not None:
    fn = sharding.ShardedProgram(fn)
  return CompiledGenerate(fn=fn, lowered=lowered, lower_s=t1 - t0,
                          compile_s=time.perf_counter() - t1)


# The default of `options`: `compiler_options()`.
CPU_DEFAULT = _CPU_DEFAULT = object()


class NonFiniteError(ValueError):
  """Generation produced NaN / Inf (SPEC §11); the message names where."""


def check_finite(sampler: sampler_lib.Sampler, finite, *, batch: int,
                 saved: str = "nothing was written") -> None:
  """Raises NonFiniteError at the first scale whose layers or logits were
  not finite (`Generation.finite`, (S_gen, L + 1) bool; None = not checked).
  `saved` ends the message: what of the run is on disk.
  """
  if finite is None:
    return
  finite = np.asarray(finite)
  bad = np.argwhere(~finite)
  if not bad.size:
    return
  si, col = (int(t) for t in bad[0])
  h, w = sampler.model.schedule[si]
  where = (f"layer {col} (its output; the layers before it are finite)"
           if col < sampler.model.depth else
           "the logits (every layer's output is finite)")
  raise NonFiniteError(
      f"non-finite values (NaN/Inf) at scale {si} ({h}x{w}), first in {where}, "
      f"batch {batch}, plan {sampler.resolved_plan.name!r}: check the "
      f"weights; {saved}")


class PlacedRun(NamedTuple):
  """A run's arguments where its program reads them (`place_run`)."""
  params: Any
  vae_params: Any
  rows: int  # per generate call
  guidance: Tuple[Array, Array]  # (cfg_scale, tau) float32 scalars


def place_run(params, vae_params, *, batch_size: int, cfg_scale: float,
              tau: float, mesh: Optional[jax.sharding.Mesh]) -> PlacedRun:
  """Weights, rows per call and guidance of a run on `mesh`.

  Without a mesh: as given (the default device). With one: `batch_size`
  rounded up to a multiple of its data axis (`sharding.rows_per_call`: the
  extra rows are the run's next images, or padding in its last batch),
  transformer params placed by its rules (`sharding.put_params`), the
  tokenizer and the guidance replicated. What `generate_images` and the
  calibration run (`evaluation.calibration.collect`) share.
  """
  guidance = (jnp.float32(cfg_scale), jnp.float32(tau))
  if mesh is None:
    return PlacedRun(params, vae_params, batch_size, guidance)
  rows = sharding.rows_per_call(batch_size, mesh)
  if rows != batch_size:
    logging.info("batch_size %d -> %d rows per call (a multiple of the "
                 "mesh's data axis)", batch_size, rows)
  return PlacedRun(sharding.put_params(params, mesh),
                   sharding.put_replicated(vae_params, mesh), rows,
                   sharding.put_replicated(guidance, mesh))


def images_per_call(batch_size: int, num_images: int) -> int:
  """The rows of one generate call: `batch_size`, or 0 = all `num_images`
  in one batch (what configs/emoji.py defaults to, whatever the number of
  prompts turns out to be).

  Raises:
    ValueError: batch_size < 0 (names config.sampling.batch_size).
  """
  if batch_size < 0:
    raise ValueError(f"config.sampling.batch_size: must be >= 0 (0 = all "
                     f"images in one batch), got {batch_size}")
  return batch_size or max(num_images, 1)


def generate_images(sampler, params, vae_params,
                    conditions: conditions_lib.Conditions, *, seed: int,
                    batch_size: int, cfg_scale: float, tau: float,
                    options: Any = _CPU_DEFAULT,
                    mesh: Optional[jax.sharding.Mesh] = None,
                    text_tokens: int = 0) -> Output:
  """Generates and decodes `conditions.num_samples` images in batches.

  The one generate loop of the package. Every batch has the static
  `batch_size` (the last one is padded by repeating its last condition; the
  extra images are dropped), so the sampler compiles once; seeds,
  conditions, cfg_scale and tau are traced. Image j of the run is drawn
  with the key `image_keys(seed, [j])`, whatever the batch size. A decoder
  already compiled for the same shapes in this process is reused
  (compile_decode_s is then ~0).

  Args:
    sampler: a Sampler (e.g. from `pipeline.samplers_from_config`) or a
      generator with its own `generate_images` (`sampling.branching`:
      SkipVAR, adaptive ToProVAR; `pipeline.generator_from_spec`).
    params: transformer params.
    vae_params: tokenizer variables (`weights.loading.load_or_init`).
    conditions: `conditions.make_conditions` (or
      `pipeline.conditions_from_config`).
    seed: the run's seed.
    batch_size: images per generate call; 0 = all in one
      (`images_per_call`).
    cfg_scale: guidance scale.
    tau: Infinity logit temperature (VAR ignores it).
    options: XLA compiler options of both compiles; default
      `compiler_options()` (CPU: fast compiles), None = XLA's defaults.
    mesh: run sharded on this mesh (`sharding.make_mesh`): rows over its
      `data` axis, `batch_size` rounded up to a multiple of it (the extra
      rows are padding, dropped); None = the unsharded program.
    text_tokens: T for Output.flops_per_image (0 = `toprovar_jax.flops`'
      default).

  Returns:
    Output.

  Raises:
    ValueError: batch_size < 0 (names config.sampling.batch_size), or a
      text mask that is not a prefix mask.
    NonFiniteError: a batch's layers or logits were NaN / Inf (with
      ExecutionConfig.check_finite, the default), before any decode.
  """
  batch_size = images_per_call(batch_size, conditions.num_samples)
  if options is _CPU_DEFAULT:
    options = compiler_options()
  if not isinstance(sampler, sampler_lib.Sampler):
    if mesh is not None and mesh.size > 1:
      raise ValueError(
          "config.mesh: prefix/suffix generators (skipvar, adaptive:) run "
          f"unsharded; got a mesh of {mesh.size} devices")
    return sampler.generate_images(
        params, vae_params, conditions, seed=seed, batch_size=batch_size,
        cfg_scale=cfg_scale, tau=tau, options=options,
        text_tokens=text_tokens)
  if conditions.text_mask is not None:
    inputs.check_text_mask(np.asarray(conditions.text_mask))
  n = conditions.num_samples
  params, vae_params, batch_size, guidance = place_run(
      params, vae_params, batch_size=batch_size, cfg_scale=cfg_scale,
      tau=tau, mesh=mesh)
  num_batches = -(-n // batch_size)
  slots = lambda j: range(j * batch_size, (j + 1) * batch_size)

  # AOT compile, timed apart from the runs.
  keys, cond = batch_inputs(sampler, conditions, slots(0), seed=seed,
                            mesh=mesh)
  vae_arg = vae_params if sampler.model.style == "var" else None
  compiled = compile_generate(sampler, params, vae_arg, keys, cond,
                              options=options, mesh=mesh)
  t1 = time.perf_counter()
  latent_info = compiled.lowered.out_info.latent
  latent_spec = jax.ShapeDtypeStruct(
      latent_info.shape, latent_info.dtype,
      sharding=latent_info.sharding if mesh is not None else None)
  dec = _compiled_decoder(sampler, vae_params, latent_spec, options)
  t2 = time.perf_counter()

  images, gen_s, dec_s = [], 0.0, 0.0
  for j in range(num_batches):
    keys, cond = batch_inputs(sampler, conditions, slots(j), seed=seed,
                              mesh=mesh)
    ta = time.perf_counter()
    out = jax.block_until_ready(
        compiled.fn(params, vae_arg, keys, *guidance, **cond))
    tb = time.perf_counter()
    check_finite(sampler, out.finite, batch=j)
    images.append(sharding.to_host(dec(vae_params, out.latent)))
    tc = time.perf_counter()
    gen_s += tb - ta
    dec_s += tc - tb
    logging.info("batch %d/%d (%d images): generate %.2f s, decode %.2f s",
                 j + 1, num_batches, batch_size, tb - ta, tc - tb)
  images = np.concatenate(images)[:n]
  samples = range(n)
  kw = dict(text_tokens=text_tokens) if text_tokens else {}
  flops = flops_lib.plan_flops(sampler.resolved_plan, sampler.model, **kw)
  return Output(
      images=images, seed=seed,
      batches=tuple(i // batch_size for i in samples),
      rows=tuple(i % batch_size for i in samples),
      timings=dict(compile_generate_s=compiled.lower_s + compiled.compile_s,
                   compile_decode_s=t2 - t1, generate_s=gen_s,
                   decode_s=dec_s),
      mesh=None if mesh is None else sharding.mesh_axes(mesh),
      flops_per_image=np.full(n, flops.total),
      plan_per_image=(sampler.resolved_plan.name,) * n)


# --------------------------------------------------------------------------
# Several plans: same seeds and conditions, compared with the first.
# --------------------------------------------------------------------------


def run_name(sampler) -> str:
  """A Sampler's plan name, or a generator's name (`branching`)."""
  if isinstance(sampler, sampler_lib.Sampler):
    return sampler.resolved_plan.name
  return sampler.name


@dataclasses.dataclass(frozen=True, eq=False)
class PlanRun:
  """One plan's images and costs.

  Attributes:
    spec: the config's plan spec ('dense', a name, a JSON path).
    sampler: the Sampler it ran with.
    output: its images and timings.
    flops: analytic transformer FLOPs per image (CFG included,
      `toprovar_jax.flops.plan_flops`; tokenizer decode excluded).
    dense_flops: the same for the dense plan of the model.
  """
  spec: str
  sampler: sampler_lib.Sampler
  output: Output
  flops: float
  dense_flops: float

  @property
  def name(self) -> str:
    return run_name(self.sampler)

  @property
  def slug(self) -> str:
    return plan_slug(self.name)


def run_plans(samplers: Sequence[sampler_lib.Sampler], specs: Sequence[str],
              params, vae_params, conditions: conditions_lib.Conditions, *,
              seed: int, batch_size: int, cfg_scale: float, tau: float,
              text_tokens: int = 0,
              mesh: Optional[jax.sharding.Mesh] = None
              ) -> Tuple[PlanRun, ...]:
  """`generate_images` for every plan with the same seeds and conditions.

  Plans run one after another (each compiles, then generates), so their
  timings do not overlap.

  Args:
    samplers: P samplers (`pipeline.samplers_from_config`; reference first).
    specs: their P plan specs (`pipeline.plan_specs`).
    params, vae_params, conditions, seed, batch_size, cfg_scale, tau, mesh:
      as for `generate_images`.
    text_tokens: T the cross-attention reads (Infinity's static text
      length), for the FLOP count; 0 = `toprovar_jax.flops`' default.

  Returns:
    P PlanRuns in the order of `samplers`.
  """
  if len(samplers) != len(specs):
    raise ValueError(f"{len(samplers)} samplers for {len(specs)} specs")
  kwargs = dict(text_tokens=text_tokens) if text_tokens else {}
  runs = []
  for spec, sampler in zip(specs, samplers):
    name = run_name(sampler)
    logging.info("Plan %r (%s): generating %d images", name, spec,
                 conditions.num_samples)
    output = generate_images(sampler, params, vae_params, conditions,
                             seed=seed, batch_size=batch_size,
                             cfg_scale=cfg_scale, tau=tau, mesh=mesh,
                             text_tokens=text_tokens)
    logging.info("Plan %r timings: %s", name, output.timings)
    runs.append(PlanRun(
        spec=spec, sampler=sampler, output=output,
        flops=float(np.mean(output.flops_per_image)),
        dense_flops=flops_lib.dense_flops(sampler.model, **kwargs).total))
  return tuple(runs)
