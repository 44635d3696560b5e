"""Compile time of generation programs and of chains of blocks.

  compile_plan         lower + compile one plan's generation program (on
                       abstract weights: nothing runs, any backend)
  compile_block_chain  N unrolled blocks as one program or as several: the
                       compile cost that `ExecutionConfig.unroll_tokens`
                       adds to a scale

Both time lowering and XLA compilation apart (`lower_and_compile`).
"""

from __future__ import annotations

import time
from typing import Any, Dict

import jax
import jax.numpy as jnp

from toprovar_jax.bench import latency
from toprovar_jax.models import transformer
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.sparsity import plan as plan_lib


def compile_plan(cfg, tok, params, vparams, cond, setup: latency.BenchSetup,
                 plan: plan_lib.SparsityPlan, *,
                 execution: sampler_lib.ExecutionConfig) -> Dict[str, Any]:
  """Lowers and compiles one plan's generation program, timing both.

  params / vparams may be ShapeDtypeStructs (`latency.init_model(abstract=
  True)`): nothing runs. cond: `latency.conditioning`.
  """
  smp = latency.make_sampler(cfg, tok, setup, plan, execution)
  compiled, _, _ = latency.compile_program(smp, params, vparams, cond)
  return {"plan": plan.name, "backend": jax.default_backend(),
          "lower_s": compiled.lower_s, "compile_s": compiled.compile_s,
          "execution": latency.execution_fields(execution)}


def _lower_and_compile(fn, *args):
  """(lowered, compiled, lower seconds, compile seconds) of jit(fn)(*args);
  args may be ShapeDtypeStructs."""
  t0 = time.perf_counter()
  lowered = jax.jit(fn).lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  return lowered, compiled, t1 - t0, time.perf_counter() - t1


def compile_block_chain(cfg, layers: int, *, programs: int = 1,
                        tokens: int = 64, rows: int = 2, text_len: int = 64,
                        dtype: str = "bfloat16",
                        attn_impl: str = "xla") -> Dict[str, Any]:
  """Compile time of `layers` unrolled blocks, as one or several programs.

  The blocks (each with its own abstract weights, nothing allocated) run in
  sequence on (rows, tokens, C) with `text_len` text tokens, no KV prefix:
  what `ExecutionConfig.unroll_tokens` puts into the generation program for
  one scale. `programs` > 1 splits the chain into that many separately
  lowered and compiled programs (the compile cost of per-scale programs);
  program i runs tokens + i tokens per row, so no two are the same program
  (jax would reuse the executable of an identical one, as it does for the
  same program at the same shapes).

  Returns {"layers", "programs", "lower_s", "compile_s", "dot_generals"}
  (sums over the programs; `dot_generals` counts the matrix products in the
  lowered programs, a check that every block is really there).
  """
  if layers < 1 or programs < 1 or layers % programs:
    raise ValueError(f"layers ({layers}) must be a positive multiple of "
                     f"programs ({programs})")
  dt = jnp.dtype(dtype)
  block = transformer.block_module(cfg, dt)
  x_at = lambda n: jax.ShapeDtypeStruct((rows, n, cfg.width), jnp.float32)
  x = x_at(tokens)
  ada_shape = ((rows, 6, cfg.width) if cfg.shared_aln else (rows, cfg.width))
  ada = jax.ShapeDtypeStruct(ada_shape, jnp.float32)
  ctx = {}
  if cfg.style == "infinity":
    kv = jax.ShapeDtypeStruct((rows, text_len, cfg.num_heads, cfg.head_dim),
                              dt)
    ctx = dict(text_kv=(kv, kv))
  zeros = lambda t: jnp.zeros(t.shape, t.dtype)
  p = jax.eval_shape(lambda: block.init(
      jax.random.key(0), zeros(x), zeros(ada),
      **jax.tree.map(zeros, ctx)))

  def chain(ps, x, ada, ctx):
    for q in ps:
      x, _ = block.apply(q, x, ada, impl=attn_impl, **ctx)
    return x

  per = layers // programs
  lower_s = compile_s = 0.0
  dots = 0
  for i in range(programs):
    lowered, _, lo, co = _lower_and_compile(chain, [p] * per,
                                            x_at(tokens + i), ada, ctx)
    lower_s += lo
    compile_s += co
    dots += lowered.as_text().count("stablehlo.dot_general")
  return {"layers": layers, "programs": programs, "lower_s": lower_s,
          "compile_s": compile_s, "dot_generals": dots}
