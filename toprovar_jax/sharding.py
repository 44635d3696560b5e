"""Scale-out on jax.sharding: the mesh, where arrays live, sharded programs.

SPEC §10. One device mesh per run, built from `config.mesh` (pairs
(axis, size), -1 = all remaining devices; default one `data` axis over every
device of every process):

  data   rows of a batch (images; conditions, PRNG keys and outputs) are
         split over it; parameters are replicated along it.
  model  optional tensor parallelism (Megatron-style): attention heads and
         the FFN hidden dimension are split over it (`models.axes` names
         the dimensions and maps them to mesh axes, in one place); the KV
         cache is split along its heads.

The generation program is the ordinary `Sampler` traced under
`models.axes.axis_rules` and jitted with declared in / out shardings
(`generate_program`); XLA's SPMD partitioner splits it. A row's result does
not depend on where it runs: image j of a run draws from its own key
`fold_in(key(seed), j)` (`sampling.runner`), so 1 and N devices make the
same tokens and images. Batches are padded to a multiple of the data axis
(`rows_per_call`; the runner drops the padding rows).

Several hosts (README "Several hosts"): every process calls
`jax.distributed.initialize` first, then builds the same mesh over all
devices; arrays are assembled from host values with
`jax.make_array_from_callback` (every process holds the same prompt list)
and brought back with `to_host` (an all-gather across processes).

Axis types: the mesh's axes are `AxisType.Auto` where jax has axis types
(the SPMD partitioner propagates shardings; `Explicit` would make every
shape-changing op of the sampler state its sharding), given explicitly.

  initialize                 `jax.distributed.initialize` for N processes
  make_mesh / mesh_axes      the mesh from (axis, size) pairs, its record
  rows_per_call              a batch size rounded up to the data axis
  row_sharding, replicated   NamedShardings of batches and of the rest
  put_rows, row_keys         host rows -> a global batch (conditions, keys)
  put_params                 parameters placed by `models.axes` rules
  generate_program           `Sampler` -> jitted, sharded generate
  to_host, gather_rows, sum_rows
                             global arrays -> host numpy; per-row
                             statistics reduced across devices / hosts

Dimension letters: B batch (rows), L layers, N tokens.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from toprovar_jax.models import axes
from toprovar_jax.models import config as config_lib
from toprovar_jax.sampling import sampler as sampler_lib

DATA = "data"
MODEL = "model"
_AXES = (DATA, MODEL)
DEFAULT_MESH = ((DATA, -1),)


def _fail(field: str, message: str):
  raise ValueError(f"config.{field}: {message}")


def initialize(coordinator: str = "", num_processes: int = 1,
               process_id: int = 0, *, timeout_s: int = 300) -> None:
  """Joins this process to a run of `num_processes` (one per host).

  Call it first, before anything touches a device. One process (the
  default) does nothing. Every process passes the same coordinator
  ("host:port" of process 0, reachable from all hosts) and its own id.

  Raises:
    ValueError: a missing coordinator or an id outside [0, num_processes).
  """
  if num_processes == 1 and not coordinator:
    return
  if num_processes < 1:
    raise ValueError(f"--num_processes: must be >= 1, got {num_processes}")
  if not coordinator:
    raise ValueError("--coordinator: host:port of process 0 is needed for "
                     f"{num_processes} processes")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id: must be in [0, {num_processes}), got "
                     f"{process_id}")
  jax.distributed.initialize(coordinator_address=coordinator,
                             num_processes=num_processes,
                             process_id=process_id,
                             initialization_timeout=timeout_s)


def make_mesh(spec: Sequence[Tuple[str, int]] = DEFAULT_MESH, *,
              devices: Optional[Sequence[Any]] = None,
              field: str = "mesh") -> Mesh:
  """A Mesh from (axis, size) pairs; size -1 takes the remaining devices.

  Args:
    spec: e.g. (("data", -1),) or (("data", 2), ("model", 2)); axes from
      {"data", "model"}, each once, at most one -1.
    devices: default `jax.devices()` (every device of every process).
    field: the config field named in errors.

  Raises:
    ValueError: a malformed spec or sizes that do not use the devices
      exactly; the message starts with `config.<field>:`.
  """
  devices = list(jax.devices() if devices is None else devices)
  try:
    pairs = [(str(a), int(s)) for a, s in spec]
  except (TypeError, ValueError):
    _fail(field, f"must be (axis, size) pairs, got {spec!r}")
  names = [a for a, _ in pairs]
  if not pairs:
    _fail(field, "is empty; use (('data', -1),) for all devices")
  for a in names:
    if a not in _AXES:
      _fail(field, f"unknown axis {a!r}; axes are {_AXES}")
  if len(set(names)) != len(names):
    _fail(field, f"names an axis twice: {names}")
  sizes = [s for _, s in pairs]
  if sum(s == -1 for s in sizes) > 1 or any(s < 1 and s != -1 for s in sizes):
    _fail(field, f"sizes must be >= 1, with at most one -1; got {sizes}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      _fail(field, f"{len(devices)} devices do not split into axes of "
            f"{sizes}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    _fail(field, f"sizes {sizes} make {math.prod(sizes)} devices, but "
          f"there are {len(devices)}")
  kw = {}
  if hasattr(jax.sharding, "AxisType"):
    kw["axis_types"] = (jax.sharding.AxisType.Auto,) * len(names)
  return jax.make_mesh(tuple(sizes), tuple(names), devices=devices, **kw)


def mesh_axes(mesh: Mesh) -> Dict[str, int]:
  """{"data": 4} / {"data": 2, "model": 2}: the record of a mesh."""
  return {str(a): int(s) for a, s in mesh.shape.items()}


def axis_size(mesh: Mesh, axis: str) -> int:
  return int(mesh.shape.get(axis, 1))


def check_model(mesh: Mesh, cfg: config_lib.TransformerConfig, *,
                field: str = "mesh") -> None:
  """Raises ValueError unless the `model` axis divides heads and FFN."""
  m = axis_size(mesh, MODEL)
  for what, n in (("num_heads", cfg.num_heads), ("mlp_hidden",
                                                 cfg.mlp_hidden)):
    if n % m:
      _fail(field, f"the model axis ({m}) does not divide {cfg.name}'s "
            f"{what} ({n})")


def rows_per_call(batch_size: int, mesh: Optional[Mesh]) -> int:
  """`batch_size` rounded up to a multiple of the data axis."""
  d = 1 if mesh is None else axis_size(mesh, DATA)
  return -(-batch_size // d) * d


def row_sharding(mesh: Mesh, axis: int = 0,
                 rules: axes.Rules = axes.DEFAULT_RULES) -> NamedSharding:
  """Rows (dimension `axis`) over the data axis, the rest replicated."""
  names = (None,) * axis + (axes.BATCH,)
  return NamedSharding(mesh, axes.spec(names, rules, mesh.axis_names))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def put_rows(x: np.ndarray, mesh: Mesh) -> jax.Array:
  """A host array whose dimension 0 is rows -> a global array split over
  `data` (every process passes the same value)."""
  x = np.asarray(x)
  sharding = row_sharding(mesh)
  return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])


def _fold_in(base, indices):
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
      jax.random.wrap_key_data(base), indices)


@functools.lru_cache(maxsize=16)
def _keys_program(mesh: Mesh):
  return jax.jit(_fold_in, out_shardings=row_sharding(mesh))


def row_keys(seed: int, indices: Sequence[int], mesh: Mesh) -> jax.Array:
  """(B,) typed keys split over `data`: row i gets fold_in(key(seed),
  indices[i]), the keys of `sampling.runner.image_keys` bit for bit."""
  base = np.asarray(jax.random.key_data(jax.random.key(seed)))
  idx = put_rows(np.asarray(indices, np.uint32), mesh)
  return _keys_program(mesh)(put_replicated(base, mesh), idx)


def _put(tree, shardings):
  """device_put in one process; from host values with several (each
  process holds the same values, e.g. the same checkpoint or init)."""
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)
  def put(x, s):
    h = np.asarray(x)
    return jax.make_array_from_callback(h.shape, s, lambda i: h[i])
  return jax.tree.map(put, tree, shardings)


def put_replicated(tree, mesh: Mesh):
  """Every leaf replicated over the mesh."""
  return _put(tree, jax.tree.map(lambda _: replicated(mesh), tree))


def param_shardings(params, mesh: Mesh,
                    rules: axes.Rules = axes.DEFAULT_RULES):
  """NamedShardings of transformer params by `models.axes.param_axes`."""
  logical = axes.param_axes(params)
  return jax.tree.map(
      lambda _, names: NamedSharding(
          mesh, axes.spec(names, rules, mesh.axis_names)),
      params, logical, is_leaf=lambda x: isinstance(x, tuple))


def put_params(params, mesh: Mesh, rules: axes.Rules = axes.DEFAULT_RULES):
  """Transformer params placed for the mesh: replicated over `data`, heads
  and FFN hidden split over `model` (when the mesh has one)."""
  return _put(params, param_shardings(params, mesh, rules))


class ShardedProgram:
  """A compiled sharded generate, called like `Sampler.generate`'s AOT
  executable: fn(params, vae_params, rng, cfg_scale, tau, **cond)."""

  def __init__(self, compiled):
    self.compiled = compiled

  def __call__(self, params, vae_params, rng, cfg_scale, tau, **cond):
    return self.compiled(params, vae_params, rng, cfg_scale, tau, cond)

  def as_text(self):
    return self.compiled.as_text()


def _out_shardings(sampler: sampler_lib.Sampler, mesh: Mesh, rules):
  rows = row_sharding(mesh, rules=rules)
  ent = row_sharding(mesh, axis=1, rules=rules)  # (L, B, N)
  n = sampler.resolved_plan.num_generated
  return sampler_lib.Generation(
      tokens=rows, latent=rows,
      logits=rows if sampler.sampling.return_logits else None,
      entropy=(tuple(ent for _ in range(n))
               if sampler.sampling.record_entropy else None))


@functools.lru_cache(maxsize=64)
def generate_program(sampler: sampler_lib.Sampler, mesh: Mesh,
                     cond_keys: Tuple[str, ...],
                     rules: axes.Rules = axes.DEFAULT_RULES,
                     with_vae: bool = False):
  """`Sampler.generate` for this mesh: jitted with declared shardings.

  The returned function takes (params, vae_params, rng, cfg_scale, tau,
  cond) positionally, cond a dict with `cond_keys` (labels, or text and
  text_mask); rows of rng / cond / outputs over `data`, parameters by
  `param_shardings` (derived from the arguments' placement: call it with
  `put_params` params), guidance and τ replicated. The program is the
  sampler's own, traced under `axes.axis_rules(mesh, rules)`.
  """
  check_model(mesh, sampler.model)
  rows = row_sharding(mesh, rules=rules)
  rep = replicated(mesh)

  def fn(params, vae_params, rng, cfg_scale, tau, cond):
    with axes.axis_rules(mesh, rules):
      return sampler._generate(  # pylint: disable=protected-access
          params, vae_params, rng, cfg_scale, tau, cond.get("labels"),
          cond.get("text"), cond.get("text_mask"), None)

  return jax.jit(
      fn, in_shardings=(None, rep if with_vae else None, rows, rep, rep,
                        {k: rows for k in cond_keys}),
      out_shardings=_out_shardings(sampler, mesh, rules))


def to_host(x) -> np.ndarray:
  """A (global) array -> numpy on this host, all rows in order (an
  all-gather across processes when it spans several)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def gather_rows(tree, *, axis: int = 0, num_rows: Optional[int] = None):
  """Per-row values of every leaf on this host, in global row order.

  Args:
    tree: arrays whose dimension `axis` is rows (e.g. a Generation's
      entropy, (L, B, N) per scale: axis=1), on any mesh / processes.
    axis: the rows dimension.
    num_rows: keep the first num_rows rows (drop padding rows); None = all.
  """
  def one(x):
    h = to_host(x)
    return h if num_rows is None else np.take(h, np.arange(num_rows), axis)
  return jax.tree.map(one, tree)


def sum_rows(tree, *, axis: int = 0, num_rows: Optional[int] = None):
  """Sums of per-row statistics over the rows, the same on any mesh.

  The reduction across devices (and hosts) of calibration statistics: the
  rows are gathered to the host in global order (`gather_rows`) and summed
  there in float64, so the sum sees the same numbers in the same order
  whatever the device count or placement. (Float64 sums of float32 values
  are moreover exact while the values span fewer than ~29 binades, so
  running sums over batches do not depend on the batch size either.)

  Returns:
    The tree of float64 numpy sums (dimension `axis` removed).
  """
  return jax.tree.map(lambda h: h.astype(np.float64).sum(axis=axis),
                      gather_rows(tree, axis=axis, num_rows=num_rows))
