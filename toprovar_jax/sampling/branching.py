"""Prefix / suffix programs: one prefix, a suffix plan chosen per image.

SkipVAR's classifier and adaptive ToProVAR decide per image, at a decision
scale d, which plan finishes it. `Branching` runs:

  run_prefix  (jit once)   init_state + step over scales [0, d) with the
                           reference plan; returns the ScaleState (caches
                           trimmed to what was written) and the policy's
                           features (B, F) of every image.
  host                     policy.choose(features) -> (B,) suffix indices.
  run_suffix  (jit once    step over [d, S_k) + finish with suffix plan k,
   per suffix plan)        from the prefix state of the rows that chose k.

Suffix plans must agree with each other (and so with the prefix) on scales
[0, d); the cache layout of a suffix plan may differ (other layer segments,
other capacities): `run_suffix` re-lays the written K/V out for its plan
(an exact copy). Rows that chose a suffix are pooled across prefix batches
until a full batch of `batch_size` rows is ready (the last one padded), so
each suffix compiles once and runs full batches. Every row draws from its
own key (fold_in(key(seed), image index)), so an image is the same whatever
batch it ran in and whatever the other images chose.

A policy is a hashable object (part of jit's static `self`) with
  features(branching, vae_params, latents, st) -> (B, F) float array, traced
    inside run_prefix; latents: the accumulated latent after each prefix
    scale; st: the state after scale d - 1 (entropy recorded when
    `needs_entropy`).
  choose(features: np.ndarray (B, F)) -> (B,) ints in [0, K), on the host.
  needs_entropy: bool.

Dimension letters: B batch, N images, K suffix plans, F features.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Dict, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax import flops as flops_lib
from toprovar_jax.sampling import conditions as conditions_lib
from toprovar_jax.sampling import inputs
from toprovar_jax.sampling import runner
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.sampling import state as state_lib
from toprovar_jax.sparsity import layout
from toprovar_jax.sparsity import plan as plan_lib

ScaleState = state_lib.ScaleState

# Compiled prefix / suffix programs by (what, branching, argument layout,
# options): a run that repeats a generator's shapes compiles nothing again.
_COMPILED: Dict[Any, Any] = {}


def _layout(*trees):
  leaves = jax.tree.leaves(trees)
  return (jax.tree.structure(trees),
          tuple((tuple(x.shape), str(x.dtype)) for x in leaves))


def _compile(key, lower, options):
  """(compiled, out_info, seconds spent compiling; 0 when cached)."""
  key = key + (tuple(sorted((options or {}).items())),)
  if key in _COMPILED:
    return _COMPILED[key] + (0.0,)
  t0 = time.perf_counter()
  lowered = lower()
  _COMPILED[key] = (lowered.compile(compiler_options=options),
                    lowered.out_info)
  return _COMPILED[key] + (time.perf_counter() - t0,)


def _capacity(plan: plan_lib.SparsityPlan, start: int, buffer: bool) -> int:
  """Cache capacity of the segment starting at layer `start` (as
  `Sampler.init_state` sizes it)."""
  cached = plan.num_generated if buffer else plan.num_generated - 1
  return sum(layout.tokens_written(plan, s, start) for s in range(cached))


def _written(plan: plan_lib.SparsityPlan, start: int, d: int) -> int:
  """K/V entries layer `start` wrote over scales [0, d)."""
  return sum(layout.tokens_written(plan, s, start) for s in range(d))


def trim_caches(st: ScaleState, plan: plan_lib.SparsityPlan,
                d: int) -> ScaleState:
  """The state with each segment's cache cut to the entries of [0, d)."""
  caches = tuple((k[:, :, :_written(plan, a, d)], v[:, :, :_written(plan, a, d)])
                 for (a, _), (k, v) in zip(layout.layer_segments(plan),
                                           st.caches))
  return st.replace(caches=caches)


def relayout_caches(st: ScaleState, from_plan: plan_lib.SparsityPlan,
                    to_plan: plan_lib.SparsityPlan, d: int,
                    buffer: bool) -> ScaleState:
  """Trimmed caches of `from_plan` (entries of scales [0, d)) as `to_plan`'s
  segments and capacities: per layer the same entries, zeros after them."""
  per_layer = []
  for (a, z), (k, v) in zip(layout.layer_segments(from_plan), st.caches):
    per_layer += [(k[j], v[j]) for j in range(z - a)]
  caches = []
  for a, z in layout.layer_segments(to_plan):
    cap, w = _capacity(to_plan, a, buffer), _written(to_plan, a, d)
    pair = []
    for i in range(2):
      t = jnp.stack([per_layer[l][i][:, :min(w, cap)] for l in range(a, z)])
      pad = cap - t.shape[2]
      if pad:
        t = jnp.pad(t, ((0, 0), (0, 0), (0, pad), (0, 0), (0, 0)))
      pair.append(t)
    caches.append(tuple(pair))
  return st.replace(caches=tuple(caches))


def check_agreement(plans, d: int) -> None:
  """Raises PlanError unless every plan generates >= d scales and all agree
  on scales [0, d)."""
  ref = plans[0]
  for p in plans:
    if p.num_generated < d:
      raise plan_lib.PlanError(
          f"generates {p.num_generated} scales, fewer than the decision "
          f"scale {d}", plan=p.name, field="exit_scale")
    for s in range(d):
      if p.scales[s] != ref.scales[s]:
        raise plan_lib.PlanError(
            f"differs from plan {ref.name!r} before the decision scale {d}; "
            "suffix plans must share the prefix", plan=p.name, scale=s,
            field="scales")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Branching:
  """A prefix program, K suffix plans and the policy that picks one per
  image (hashable: jit's static `self`).

  Attributes:
    name: the method's name in logs and results ('skipvar', ...).
    suffixes: one Sampler per suffix plan (same model, tokenizer, sampling
      and execution; only their plans differ).
    decision_scale: d; the prefix runs scales [0, d).
    policy: see the module docstring.
  """
  name: str
  suffixes: Tuple[sampler_lib.Sampler, ...]
  decision_scale: int
  policy: Any

  def __post_init__(self):
    base = self.suffixes[0]
    for s in self.suffixes:
      if (s.model, s.tokenizer, s.sampling, s.execution) != (
          base.model, base.tokenizer, base.sampling, base.execution):
        raise ValueError(f"{self.name}: suffix samplers differ in more than "
                         "their plans")
    if not 1 <= self.decision_scale <= base.model.num_scales:
      raise plan_lib.PlanError(
          f"decision scale {self.decision_scale} is outside [1, "
          f"{base.model.num_scales}]", plan=self.name,
          field="decision_scale")
    check_agreement([s.resolved_plan for s in self.suffixes],
                    self.decision_scale)

  # -- what callers of a Sampler read -----------------------------------------

  @property
  def model(self):
    return self.suffixes[0].model

  @property
  def tokenizer(self):
    return self.suffixes[0].tokenizer

  @property
  def plans(self) -> Tuple[plan_lib.SparsityPlan, ...]:
    return tuple(s.resolved_plan for s in self.suffixes)

  @property
  def prefix(self) -> sampler_lib.Sampler:
    """The prefix's Sampler: the suffix plan generating the most scales
    (its next input is computed past d), entropy recorded if the policy
    needs it."""
    longest = max(self.suffixes, key=lambda s: s.resolved_plan.num_generated)
    sampling = self.suffixes[0].sampling
    if self.policy.needs_entropy and not sampling.record_entropy:
      sampling = dataclasses.replace(sampling, record_entropy=True)
    return dataclasses.replace(longest, sampling=sampling)

  def plan_flops(self, text_tokens: int = 0) -> np.ndarray:
    """(K,) analytic transformer FLOPs per image of each suffix plan (the
    prefix agrees with all of them)."""
    kw = dict(text_tokens=text_tokens) if text_tokens else {}
    return np.array([flops_lib.plan_flops(p, self.model, **kw).total
                     for p in self.plans])

  # -- the programs -------------------------------------------------------------

  @functools.partial(jax.jit, static_argnums=0)
  def run_prefix(self, params, vae_params, rng, cfg_scale, tau, labels=None,
                 text=None, text_mask=None) -> Tuple[ScaleState, jax.Array]:
    """Scales [0, d) of one batch: (state, features (B, F))."""
    s, d = self.prefix, self.decision_scale
    program = s.program(params)
    # FastVAR-style restores of a suffix from a prefix scale need its
    # branch outputs recorded there.
    program.cache_scales = program.cache_scales | {
        p.cache_from for plan in self.plans for p in plan.scales
        if p.restore == "cached" and p.cache_from < d}
    st = s.init_state(program, params, labels=labels, text=text,
                      text_mask=text_mask)
    inputs.check_row_keys(rng, st.batch)
    latents = []
    for _ in range(d):
      st = s.step(program, params, vae_params, st, rng=rng,
                  cfg_scale=cfg_scale, tau=tau)
      latents.append(st.latent)
    feats = self.policy.features(self, vae_params, tuple(latents), st)
    if not self.suffixes[0].sampling.record_entropy:
      st = st.replace(entropy=())
    return trim_caches(st, program.plan, d), feats

  @functools.partial(jax.jit, static_argnums=(0, 1))
  def run_suffix(self, k: int, params, vae_params, st: ScaleState, rng,
                 cfg_scale, tau) -> sampler_lib.Generation:
    """Scales [d, S_k) of suffix plan k from a prefix state, then finish."""
    s = self.suffixes[k]
    program = s.program(params)
    st = relayout_caches(st, self.prefix.resolved_plan, program.plan,
                         self.decision_scale, program.buffer)
    for _ in range(self.decision_scale, program.num_gen):
      st = s.step(program, params, vae_params, st, rng=rng,
                  cfg_scale=cfg_scale, tau=tau)
    return s.finish(st)

  # -- the host loop ------------------------------------------------------------

  def generate_images(self, params, vae_params,
                      conditions: conditions_lib.Conditions, *, seed: int,
                      batch_size: int, cfg_scale: float, tau: float,
                      options: Any = None, text_tokens: int = 0
                      ) -> runner.Output:
    """`runner.generate_images` for a per-image choice of suffix plan.

    Output.flops_per_image holds each image's suffix plan's FLOPs and
    Output.plan_per_image its name. options: XLA compiler options (the
    runner passes its default).
    """
    run = Run(self, params, vae_params, conditions, seed=seed,
               batch_size=batch_size, guidance=(cfg_scale, tau),
               options=options)
    flops = self.plan_flops(text_tokens)
    pending: Dict[int, Optional[tuple]] = {}
    for j in range(run.num_batches):
      st, feats, keys, slots = run.prefix_batch(j)
      choice = np.asarray(self.policy.choose(feats), np.int64)
      live = slots < run.n  # padding images of the last batch stop here
      for k in np.unique(choice[live]):
        rows = np.flatnonzero(live & (choice == k))
        part = (state_lib.take_rows(st, rows), keys[rows], slots[rows])
        pending[k] = part if pending.get(k) is None else _concat(
            pending[k], part)
        while pending[k] is not None and len(pending[k][2]) >= batch_size:
          head, pending[k] = _split(pending[k], batch_size)
          run.suffix_batch(int(k), *head)
      run.choices[slots[live]] = choice[live]
    for k, part in pending.items():
      if part is not None:
        run.suffix_batch(int(k), *part)
    return run.output(
        flops_per_image=flops[run.choices],
        plan_per_image=tuple(self.plans[c].name for c in run.choices))

  def outcomes(self, params, vae_params,
               conditions: conditions_lib.Conditions, *, seed: int,
               batch_size: int, cfg_scale: float, tau: float,
               options: Any = None) -> Tuple[np.ndarray, np.ndarray]:
    """Every suffix plan on every image (training a policy).

    Returns:
      (features (N, F), images (K, N, H, W, 3) uint8): image i of suffix k
      is what `generate_images` makes for image i when it chooses k.
    """
    run = Run(self, params, vae_params, conditions, seed=seed,
               batch_size=batch_size, guidance=(cfg_scale, tau),
               options=options)
    feats, images = [], [[] for _ in self.suffixes]
    for j in range(run.num_batches):
      st, f, keys, slots = run.prefix_batch(j)
      feats.append(f)
      for k in range(len(self.suffixes)):
        images[k].append(run.suffix_images(k, st, keys))
    n = run.n
    return (np.concatenate(feats)[:n],
            np.stack([np.concatenate(im)[:n] for im in images]))


def _concat(a, b):
  return (state_lib.concat_rows([a[0], b[0]]),
          jnp.concatenate([a[1], b[1]]), np.concatenate([a[2], b[2]]))


def _split(part, m):
  st, keys, slots = part
  n = len(slots)
  head = (state_lib.take_rows(st, np.arange(m)), keys[:m], slots[:m])
  tail = None if n == m else (state_lib.take_rows(st, np.arange(m, n)),
                              keys[m:], slots[m:])
  return head, tail


class Run:
  """One run's compiled programs, timings and images (host bookkeeping)."""

  def __init__(self, br: Branching, params, vae_params, conditions, *, seed,
               batch_size, guidance, options):
    batch_size = runner.images_per_call(batch_size, conditions.num_samples)
    if conditions.text_mask is not None:
      inputs.check_text_mask(np.asarray(conditions.text_mask))
    self.br, self.params, self.vae = br, params, vae_params
    self.conditions, self.seed, self.b = conditions, seed, batch_size
    self.guidance = tuple(jnp.float32(g) for g in guidance)
    self.options = options
    self.n = conditions.num_samples
    self.num_batches = -(-self.n // batch_size)
    self.choices = np.zeros(self.n, np.int64)
    self.images: Optional[np.ndarray] = None
    self.t = dict(compile_generate_s=0.0, compile_decode_s=0.0,
                  generate_s=0.0, decode_s=0.0)
    self._suffix_fns: Dict[int, Any] = {}
    keys, cond = self._inputs(0)
    self._keys0 = keys
    self._prefix, out_info, dt = _compile(
        ("prefix", br, _layout(params, vae_params, keys, cond)),
        lambda: type(br).run_prefix.lower(br, params, vae_params, keys,
                                          *self.guidance, **cond), options)
    self.t["compile_generate_s"] += dt
    self._state_spec = jax.tree.map(
        lambda o: jax.ShapeDtypeStruct(o.shape, o.dtype), out_info[0])
    self._dec = None

  def _inputs(self, j):
    slots = range(j * self.b, (j + 1) * self.b)
    return runner.batch_inputs(self.br.prefix, self.conditions, slots,
                               seed=self.seed)

  def prefix_batch(self, j):
    keys, cond = self._inputs(j)
    ta = time.perf_counter()
    st, feats = jax.block_until_ready(
        self._prefix(self.params, self.vae, keys, *self.guidance, **cond))
    self.t["generate_s"] += time.perf_counter() - ta
    slots = np.arange(j * self.b, (j + 1) * self.b)
    return st, np.asarray(feats), keys, slots

  def suffix_fn(self, k):
    """Suffix k compiled for a full batch (once per layout)."""
    if k not in self._suffix_fns:
      keys = self._keys0
      fn, out_info, dt = _compile(
          ("suffix", k, self.br, _layout(self.params, self.vae, keys),
           _layout(self._state_spec)),
          lambda: type(self.br).run_suffix.lower(
              self.br, k, self.params, self.vae, self._state_spec, keys,
              *self.guidance), self.options)
      self._suffix_fns[k] = fn
      self.t["compile_generate_s"] += dt
      if self._dec is None:
        t1 = time.perf_counter()
        info = out_info.latent
        self._dec = runner._compiled_decoder(  # pylint: disable=protected-access
            self.br.prefix, self.vae,
            jax.ShapeDtypeStruct(info.shape, info.dtype), self.options)
        self.t["compile_decode_s"] += time.perf_counter() - t1
    return self._suffix_fns[k]

  def suffix_images(self, k, st, keys) -> np.ndarray:
    """(B, H, W, 3) uint8 of suffix k on a full batch of prefix rows."""
    fn = self.suffix_fn(k)
    ta = time.perf_counter()
    gen = jax.block_until_ready(
        fn(self.params, self.vae, st, keys, *self.guidance))
    tb = time.perf_counter()
    images = np.asarray(self._dec(self.vae, gen.latent))
    self.t["generate_s"] += tb - ta
    self.t["decode_s"] += time.perf_counter() - tb
    return images

  def suffix_batch(self, k, st, keys, slots):
    """Runs suffix k on m <= B pooled rows (padded to B) into the images."""
    m = len(slots)
    if m < self.b:
      idx = np.minimum(np.arange(self.b), m - 1)
      st, keys = state_lib.take_rows(st, idx), keys[idx]
    images = self.suffix_images(k, st, keys)[:m]
    if self.images is None:
      self.images = np.zeros((self.n,) + images.shape[1:], np.uint8)
    self.images[slots] = images
    logging.info("%s: suffix %s on %d images", self.br.name,
                 self.br.plans[k].name, m)

  def output(self, **extra) -> runner.Output:
    samples = range(self.n)
    return runner.Output(
        images=self.images, seed=self.seed,
        batches=tuple(i // self.b for i in samples),
        rows=tuple(i % self.b for i in samples), timings=dict(self.t),
        **extra)
