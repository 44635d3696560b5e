"""What the sharded code path costs: one plan, unsharded vs on a mesh.

The same `Sampler`, plan, batch and inputs compiled twice through the
runner (`latency.compile_program`): once as today's unsharded program
(`Sampler.generate` on the default device), once as the mesh program
(`toprovar_jax.sharding.generate_program`: declared shardings, parameters
placed by the axis rules, rows over `data`). On a 1-device mesh the two
should cost the same (SPEC §10's "≤ 2 % over the unsharded program"); on N
devices the mesh program splits the rows.

Timing: a warm-up call of each, then `runs` rounds that time one call of
each in turn (interleaved, so drift of the device clock or of other load
hits both alike), each closed by `block_until_ready`; medians.

Dimension letters: B batch.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Dict, Optional

import jax
import numpy as np

from toprovar_jax import sharding
from toprovar_jax.bench import latency
from toprovar_jax.sampling import conditions as conditions_lib
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.sparsity import plan as plan_lib

PROGRAMS = ("unsharded", "mesh")


def mesh_overhead(cfg, tok, params, vparams,
                  cond: conditions_lib.Conditions,
                  setup: latency.BenchSetup, plan: plan_lib.SparsityPlan, *,
                  execution: sampler_lib.ExecutionConfig,
                  mesh: jax.sharding.Mesh, runs: int = 5,
                  options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """Times `plan` unsharded and on `mesh` (B = setup.batch, a multiple of
  the mesh's data axis; the same seeds and conditions). `options`: XLA
  compiler options of both compiles (None = XLA's defaults, what is timed).

  Returns:
    JSON-ready dict: compile_s and transformer_s (medians) per program,
    transformer_runs_s, overhead (mesh / unsharded - 1), tokens_equal
    (both programs drew the same tokens), the mesh and the plan.
  """
  if setup.batch % sharding.axis_size(mesh, sharding.DATA):
    raise ValueError(f"batch {setup.batch} is not a multiple of the mesh's "
                     f"data axis {sharding.mesh_axes(mesh)}")
  smp = latency.make_sampler(cfg, tok, setup, plan, execution)
  compiled = {
      "unsharded": latency.compile_program(smp, params, vparams, cond,
                                           options=options),
      "mesh": latency.compile_program(smp, params, vparams, cond, mesh=mesh,
                                      options=options)}
  calls = {k: (lambda c=c: c[0].fn(*c[1], **c[2]))
           for k, c in compiled.items()}
  outs = {k: jax.block_until_ready(f()) for k, f in calls.items()}
  times = {k: [] for k in PROGRAMS}
  for _ in range(runs):
    for k in PROGRAMS:
      t = time.perf_counter()
      jax.block_until_ready(calls[k]())
      times[k].append(time.perf_counter() - t)
  med = {k: statistics.median(v) for k, v in times.items()}
  return {
      "plan": plan.name,
      "execution": latency.execution_fields(execution),
      "batch": setup.batch,
      "mesh": sharding.mesh_axes(mesh),
      "compile_s": {k: c[0].lower_s + c[0].compile_s
                    for k, c in compiled.items()},
      "transformer_s": med,
      "transformer_runs_s": times,
      "overhead": med["mesh"] / med["unsharded"] - 1.0,
      "tokens_equal": bool(np.array_equal(
          sharding.to_host(outs["mesh"].tokens),
          np.asarray(outs["unsharded"].tokens))),
  }
