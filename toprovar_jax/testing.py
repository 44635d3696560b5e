"""Helpers shared by tests and the parity CLI (no test framework imports)."""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Any, NamedTuple

import numpy as np


def reference_dir() -> pathlib.Path:
  """Folder of the official-code golden files.

  `TOPROVAR_REFERENCE_DIR` (tests/conftest.py sets it to the `shared/`
  beside the checkout, where CI places it); without it `../shared/reference`
  from the current folder (the checkout's root, where commands run). The
  package never locates data by its own install path.
  """
  env = os.environ.get("TOPROVAR_REFERENCE_DIR")
  if env:
    return pathlib.Path(env)
  return pathlib.Path("..") / "shared" / "reference"


def load_reference(name: str) -> dict:
  """Merges `NAME.npz` and `NAME_vae.npz` (reference README "Loading")."""
  d = reference_dir()
  out = {}
  for fname in (f"{name}.npz", f"{name}_vae.npz"):
    p = d / fname
    if p.exists():
      with np.load(p) as z:
        out.update({k: z[k] for k in z.files})
  if not out:
    raise FileNotFoundError(f"no reference files for {name!r} under {d}")
  return out


def micro_infinity():
  """A 4-scale, 3-layer Infinity-style config that compiles fast on CPU."""
  from toprovar_jax.models import config as config_lib
  return config_lib.TransformerConfig(
      name="micro_infinity", style="infinity", depth=3, width=64, num_heads=2,
      mlp_hidden=128, schedule=config_lib.square_schedule((1, 2, 4, 6)),
      latent_dim=4, shared_aln=True, num_level_embeds=15, text_dim=128,
      text_maxlen=16, rope_grid=(64, 64))


def micro_var():
  """A 4-scale, 3-layer VAR-style config (needs a VQVAE for its latents)."""
  from toprovar_jax.models import config as config_lib
  return config_lib.TransformerConfig(
      name="micro_var", style="var", depth=3, width=64, num_heads=2,
      mlp_hidden=256, schedule=config_lib.square_schedule((1, 2, 3, 4)),
      latent_dim=8, vocab_size=32, num_classes=10, num_level_embeds=4)


def with_scales(plan, name: str, fn):
  """`plan` renamed, with scale s replaced by fn(s, ScalePlan)."""
  import dataclasses
  scales = tuple(fn(s, sp) for s, sp in enumerate(plan.scales))
  return dataclasses.replace(plan, name=name, scales=scales)


def probe_sx_plan(cfg, keep=(8, 16), name: str = "pruned"):
  """A pruned plan for the 4-scale micro configs (unvalidated).

  Scale 2: layers "FSS" keeping keep[0] tokens chosen by the entropy of a
  probe at layer 0; scale 3: "FSX" keeping keep[1] by the previous scale's
  entropy, with the unconditional branch dropped (SkipVAR).
  """
  import dataclasses
  from toprovar_jax.sparsity import plan as plan_lib

  def fn(s, sp):
    if s == 2:
      return dataclasses.replace(sp, layers="FSS", keep=keep[0],
                                 probe_layer=0, scorer="entropy",
                                 entropy_from="probe")
    if s == 3:
      return dataclasses.replace(sp, layers="FSX", keep=keep[1],
                                 probe_layer=0, scorer="entropy",
                                 entropy_from="previous", guidance=False)
    return sp
  return with_scales(plan_lib.dense_plan(cfg), name, fn)


def micro_bsq(stride: int = 1):
  """A one- (stride 1) or two-level (stride 2) BSQ VAE of 4 bits: the micro
  Infinity model's 6x6 latent grid decodes to a 6x6 / 12x12 image."""
  from toprovar_jax.models import config as config_lib
  return config_lib.BSQConfig(base_ch=32, ch_mult=(1,) * stride,
                              num_res_blocks=0, codebook_dim=4)


# Text lengths of the micro run's rows (each row's real tokens of _MICRO_T).
_MICRO_LENGTHS = (3, 8, 5, 6, 2, 7)
_MICRO_T = 8


class MicroRun(NamedTuple):
  """A micro Infinity model with random weights, a tiny VAE and text rows.

  text: (R, 8, C) float32, zero past each row's length; mask: (R, 8) bool
  prefix masks of lengths 3, 8, 5, 6, 2, 7 (the first R).
  """
  cfg: Any
  params: Any
  vae: Any
  tokenizer: Any
  text: np.ndarray
  mask: np.ndarray


@functools.lru_cache(maxsize=None)
def micro_infinity_run(rows: int, stride: int = 1) -> MicroRun:
  """`micro_infinity` with seeded weights and `rows` text rows.

  stride 1: a 6x6 latent grid decodes to a 6x6 image (cheapest); stride 2:
  12x12 images, as large as SSIM's 11x11 window needs. The text rows are
  the first `rows` of one draw, so runs of different sizes share rows.
  """
  import jax
  import jax.numpy as jnp
  from toprovar_jax.models import transformer
  from toprovar_jax.weights import loading
  if not 1 <= rows <= len(_MICRO_LENGTHS) or stride not in (1, 2):
    raise ValueError(f"rows in 1..{len(_MICRO_LENGTHS)}, stride 1 or 2; "
                     f"got {rows}, {stride}")
  cfg, tok = micro_infinity(), micro_bsq(stride)
  params = transformer.init_params(cfg, jax.random.key(0))
  rng = np.random.default_rng(1)
  vae = jax.tree.map(lambda s: jnp.asarray(
      rng.normal(0, 0.2, s.shape).astype(np.float32)),
                     loading.abstract_tokenizer(cfg, tok))
  text = rng.normal(0, 0.3, (rows, _MICRO_T, cfg.text_dim)).astype(np.float32)
  mask = (np.arange(_MICRO_T)[None]
          < np.array(_MICRO_LENGTHS[:rows])[:, None])
  return MicroRun(cfg, params, vae, tok, text * mask[..., None], mask)
