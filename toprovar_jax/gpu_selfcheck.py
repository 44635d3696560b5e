"""GPU self-check: the Pallas and cuDNN routes against the XLA path.

Run before benchmarking in every GPU lease (`experiments/gpu_selfcheck.py`):
CPU tests run Pallas only in interpret mode and cuDNN never, so this is the
one place where the kernels that benchmarks time are checked for numbers.

Checks (each a dict in the report, `passed` True/False):
  attention  for self-attention over a cache with a static valid length and
             for cross-attention with padded text (per-row key lengths):
             out and head-mean entropy of 'pallas' (fp32 and bf16 inputs)
             and 'cudnn' (bf16; it has no fp32 path) against 'xla' in fp32
             on the same inputs.
  sampler    the micro Infinity model with forced tokens, dense and a pruned
             plan (entropy probe, S and X layers, previous-scale entropy,
             the guidance drop): guided logits of attn_impl 'cudnn' (and,
             for the pruned plan, its probes on the Pallas FAE) against
             attn_impl 'xla', both in bf16; kept sets must agree.

Tolerances are measured, not assumed. For every bf16 comparison the same
computation also runs through XLA in bf16, and its deviation from XLA fp32
is the noise of bf16 rounding on these inputs: a route passes when its
deviation from the fp32 result is at most `NOISE_FACTOR` times that noise
(plus `ABS_FLOOR` for deviations at fp32 rounding). Two bf16 routes round
differently but no route should be noisier than twice XLA's own bf16
path. fp32 Pallas is held to `FP32_TOL` (SPEC §4: 1e-3 relative entropy).

Nothing here imports ml_collections: the check runs on a bare GPU image
with jax only. On a host without a GPU `run(gpu=False)` runs the XLA and
Pallas-interpret parts only and says so in the report.

Dimension letters: B rows, Nq queries, Nk keys, H heads, D head dim, T text.
"""

from __future__ import annotations

import time
from typing import Dict, List

import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax import testing
from toprovar_jax.models import transformer
from toprovar_jax.ops import attention as attention_ops
from toprovar_jax.sampling import runner
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.sparsity import validation

NOISE_FACTOR = 2.0
ABS_FLOOR = 1e-5
FP32_TOL = 1e-3


def _max_abs(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64)
                             - np.asarray(b, np.float64))))


def _check(name: str, dev: float, tol: float, **detail) -> Dict:
  return dict(name=name, max_abs_diff=dev, tolerance=tol,
              passed=bool(np.isfinite(dev) and dev <= tol), **detail)


def _noise_checks(name: str, ref, bf16_xla, routes: Dict[str, object]):
  """Checks of bf16 routes against fp32 `ref` with the measured bf16 noise
  (XLA bf16 vs fp32) as the yardstick."""
  noise = _max_abs(bf16_xla, ref)
  tol = NOISE_FACTOR * noise + ABS_FLOOR
  return [_check(f"{name}/{route}", _max_abs(val, ref), tol,
                 bf16_xla_noise=noise) for route, val in routes.items()]


# -- attention -----------------------------------------------------------------


def _attention_inputs(gpu: bool):
  """Self-attention over a cache (Nq new queries, a kv_len-valid cache) and
  cross-attention over padded text; shapes like the emoji model's scales."""
  b, h, d = 2, 4, 64
  nq, nk, kv_len = (256, 640, 576) if gpu else (24, 64, 56)
  t = 32
  keys = jax.random.split(jax.random.key(0), 6)
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  # Cosine attention: unit q and k, the per-head scale (up to 100) in q.
  q = unit(jax.random.normal(keys[0], (b, nq, h, d))) * 12.0
  k = unit(jax.random.normal(keys[1], (b, nk, h, d)))
  v = jax.random.normal(keys[2], (b, nk, h, d))
  qc = jax.random.normal(keys[3], (b, nq, h, d))
  kc = jax.random.normal(keys[4], (b, t, h, d))
  vc = jax.random.normal(keys[5], (b, t, h, d))
  lengths = jnp.array([t // 2 + 3, t], jnp.int32)
  return dict(
      self_attention=(dict(q=q, k=k, v=v), dict(scale=1.0, kv_len=kv_len)),
      cross_attention=(dict(q=qc, k=kc, v=vc),
                       dict(scale=float(d) ** -0.5, key_lengths=lengths)))


def attention_checks(gpu: bool) -> List[Dict]:
  """Pallas (fp32, bf16) and cuDNN (bf16, GPU only) vs XLA fp32."""
  out = []
  for case, (arrays, kw) in _attention_inputs(gpu).items():
    def run(impl, dtype, arrays=arrays, kw=kw):
      cast = {n: a.astype(dtype) for n, a in arrays.items()}
      fn = jax.jit(lambda a: attention_ops.attention(
          a["q"], a["k"], a["v"], implementation=impl, return_entropy=True,
          precision=(jax.lax.Precision.HIGHEST if dtype == jnp.float32
                     else None), **kw))
      o, e = fn(cast)
      return np.asarray(o, np.float32), np.asarray(e, np.float32)
    ref_o, ref_e = run("xla", jnp.float32)
    p_o, p_e = run("pallas", jnp.float32)
    out.append(_check(f"attention/{case}/pallas_fp32/out", _max_abs(p_o, ref_o),
                      FP32_TOL))
    out.append(_check(f"attention/{case}/pallas_fp32/entropy",
                      _max_abs(p_e, ref_e),
                      FP32_TOL * float(np.max(np.abs(ref_e)))))
    routes = {"pallas_bf16": run("pallas", jnp.bfloat16)}
    if gpu:
      routes["cudnn_bf16"] = run("cudnn", jnp.bfloat16)
    xla_bf16 = run("xla", jnp.bfloat16)
    for j, part in enumerate(("out", "entropy")):
      out += _noise_checks(f"attention/{case}/{part}", (ref_o, ref_e)[j],
                           xla_bf16[j], {r: v[j] for r, v in routes.items()})
  return out


# -- sampler -------------------------------------------------------------------


def _micro_setup():
  cfg = testing.micro_infinity()
  params = transformer.init_params(cfg, jax.random.key(0))
  text = jax.random.normal(jax.random.key(1), (2, 8, cfg.text_dim)) * 0.3
  mask = jnp.arange(8)[None] < jnp.array([[5], [8]])
  forced = np.random.RandomState(3).randint(
      0, 2, (2, cfg.seq_len, cfg.latent_dim))
  return cfg, params, dict(text=text, text_mask=mask), jnp.asarray(forced)


def _generate(cfg, params, cond, forced, plan, dtype, **execution):
  smp = sampler_lib.Sampler(
      model=cfg, tokenizer=None, plan=plan,
      sampling=sampler_lib.SamplingConfig(top_k=1, return_logits=True,
                                          record_entropy=False, dtype=dtype),
      execution=sampler_lib.ExecutionConfig(**execution))
  out = smp.generate(params, None, runner.image_keys(0, range(2)),
                     jnp.float32(3.0), jnp.float32(1.0), forced=forced,
                     **cond)
  return np.asarray(out.logits, np.float32)


def sampler_checks(gpu: bool) -> List[Dict]:
  """Dense and pruned generation: cuDNN (and the FAE probes) vs XLA."""
  cfg, params, cond, forced = _micro_setup()
  pruned = validation.validate_plan(
      testing.probe_sx_plan(cfg, keep=(7, 13), name="selfcheck_pruned"), cfg)
  out = []
  for name, plan in (("dense", None), ("pruned", pruned)):
    gen = lambda dtype, plan=plan, **ex: _generate(cfg, params, cond, forced,
                                                   plan, dtype, **ex)
    ref = gen("float32")
    routes = {}
    if gpu:
      routes["cudnn_bf16"] = gen("bfloat16", attn_impl="cudnn")
      if plan is not None:
        routes["cudnn_fae_probe_bf16"] = gen("bfloat16", attn_impl="cudnn",
                                             entropy_impl="pallas")
    else:
      routes["xla_fae_probe_bf16"] = gen("bfloat16", entropy_impl="pallas")
    out += _noise_checks(f"sampler/{name}/logits", ref, gen("bfloat16"),
                         routes)
  return out


def run(gpu: bool) -> Dict:
  """Every check; the report is JSON-ready. gpu False: XLA / interpret only."""
  t0 = time.perf_counter()
  checks = attention_checks(gpu) + sampler_checks(gpu)
  return dict(
      backend=jax.default_backend(), devices=[str(d) for d in jax.devices()],
      jax_version=jax.__version__, gpu=gpu,
      complete=gpu,
      note=("" if gpu else "no GPU: cuDNN not run, Pallas in interpret mode"),
      noise_factor=NOISE_FACTOR, abs_floor=ABS_FLOOR, fp32_tol=FP32_TOL,
      checks=checks, passed=all(c["passed"] for c in checks),
      seconds=round(time.perf_counter() - t0, 1))
