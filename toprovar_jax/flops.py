"""Exact analytic FLOPs of generating one image under a sparsity plan.

Conventions (ARCHITECTURES §E, so the numbers match its tables):
  * A multiply-add is 2 FLOPs. Inference uses a KV cache: at scale s a layer
    runs l query tokens against its cache of earlier scales plus those l.
  * Classifier-free guidance doubles the batch: 2 sequences per image, 1 at
    scales whose plan has `guidance=False` (SkipVAR's branch drop).
  * Per block and per sequence, with C width, F FFN hidden, T text tokens:
      linear      2·l·4C² (QKV + output projection) + 2·l·2·C·F (FFN)
      self-attn   4·l·L_keys·C  (QKᵀ and AV over all heads)
      cross-attn  4·l·C² (q, out proj) + 4·l·T·C (scores, AV)
                  + 4·T·C² (text K/V projection; the official code recomputes
                  it at every scale: `recompute_text_kv=True`)  [Infinity]
  * Per plan letter: F runs l = N_s queries and writes N_s K/V; S runs l = K_s
    and writes K_s (pruned tokens write no K/V, SPEC §3); X costs nothing.
    L_keys = the layer's K/V written at earlier generated scales + l. Scales
    >= exit_scale cost nothing.
  * Head: VAR's V-way head 2·N_s·C·V per sequence is counted (≈0.5 %).
    Infinity's 2d-logit bit head is negligible and left out by default, as in
    §E (`count_bit_head=True` adds it). The head always runs on all N_s
    tokens: S layers scatter their outputs back into the full map.
  * Not counted (all < 0.1 %): embeddings, norms, AdaLN projections, the
    sampler, token scoring (frequency scores, the entropy accumulator of the
    probe layer), gather / scatter and FastVAR's area-resized restore.

Dimension letters: S scales, s scale index, N_s tokens, K_s kept tokens,
L layers, l queries of a layer at a scale, C width, F FFN hidden, T text
tokens, V codebook size.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

from toprovar_jax.models import config as config_lib
from toprovar_jax.sparsity import layout
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import validation

COMPONENTS = ("linear", "self_attn", "cross_attn", "head")
# Text tokens after masking in §E (a typical prompt; T5 pads to 512 but the
# official code packs only the unmasked tokens for cross-attention).
DEFAULT_TEXT_TOKENS = 64
_CFG_SEQUENCES = 2

# Tokenizer decode cost, measured (not modelled) with torch's FlopCounterMode
# on meta tensors (ARCHITECTURES §E.1 / §E.2):
#   BSQ VAE decoder (Infinity-2B, d32 stride 16) at 1024x1024: 9.85 TFLOP.
#   VAR multi-scale VQVAE decoder (incl. post_quant_conv) at 256x256: 0.394.
# Other resolutions scale by pixel count; exact for the convolutions that
# dominate both decoders (VAR-d36 at 512²: 1.58 TF, as §E.2 states). §E also
# quotes 9.9 TF for Infinity-8B's d14 stride-8 VAE, so the BSQ figure is used
# for both Infinity models.
BSQ_DECODE_FLOPS_1024 = 9.85e12
VQVAE_DECODE_FLOPS_256 = 0.394e12
# Every variant maps one token to 16x16 pixels: VAR and Infinity-2B at VAE
# stride 16; Infinity-8B at stride 8 with 2x2 patchify.
PIXELS_PER_TOKEN_SIDE = 16


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlanFlops:
  """FLOPs of one image under one plan (forward passes of the transformer).

  Attributes:
    total: all FLOPs (blocks + head), per image.
    by_scale: per scale of the schedule (len S; 0 for scales not generated),
      blocks + head.
    by_scale_layer: [s][l] FLOPs of block l at scale s (head excluded),
      shape (S, L).
    by_component: totals of 'linear', 'self_attn', 'cross_attn', 'head'.
    by_scale_component: the same split per scale (len S).
  """
  total: float
  by_scale: Tuple[float, ...]
  by_scale_layer: Tuple[Tuple[float, ...], ...]
  by_component: Mapping[str, float]
  by_scale_component: Tuple[Mapping[str, float], ...]


def plan_flops(plan: plan_lib.SparsityPlan,
               cfg: config_lib.TransformerConfig, *,
               text_tokens: int = DEFAULT_TEXT_TOKENS,
               recompute_text_kv: bool = True,
               count_bit_head: bool = False) -> PlanFlops:
  """Analytic FLOPs of generating one image with `plan` (CFG batch 2).

  Args:
    plan: the sparsity plan; validated against `cfg` first.
    cfg: the model.
    text_tokens: T, text tokens a cross-attention attends to (Infinity).
    recompute_text_kv: count the text K/V projection at every generated scale
      (the official Infinity code) rather than once per layer and sequence.
    count_bit_head: also count Infinity's 2d-logit head.

  Returns:
    The structured FLOP count.
  """
  validation.validate_plan(plan, cfg)
  c = cfg.width
  f = cfg.mlp_hidden
  t = text_tokens
  cross = cfg.style == "infinity"
  if cfg.style == "var":
    head_out = cfg.vocab_size
  else:
    head_out = cfg.head_out if count_bit_head else 0
  num_scales = len(plan.schedule)
  tokens = plan.tokens_per_scale
  offsets = layout.kv_write_offsets(plan)
  text_kv_done = [False] * plan.num_layers

  by_scale_layer = []
  by_scale_component = []
  for s in range(num_scales):
    comp = dict.fromkeys(COMPONENTS, 0.0)
    layer_flops = [0.0] * plan.num_layers
    if s < plan.num_generated:
      seqs = _CFG_SEQUENCES if plan.scales[s].guidance else 1
      for l in range(plan.num_layers):
        q = layout.tokens_written(plan, s, l)  # queries == K/V written
        if q == 0:  # X: the block is bypassed.
          continue
        keys = offsets[s][l] + q
        linear = 2 * q * 4 * c * c + 2 * q * 2 * c * f
        self_attn = 4 * q * keys * c
        cross_attn = 0
        if cross:
          cross_attn = 4 * q * c * c + 4 * q * t * c
          if recompute_text_kv or not text_kv_done[l]:
            cross_attn += 4 * t * c * c
            text_kv_done[l] = True
        for name, v in (("linear", linear), ("self_attn", self_attn),
                        ("cross_attn", cross_attn)):
          comp[name] += seqs * v
        layer_flops[l] = float(seqs * (linear + self_attn + cross_attn))
      comp["head"] = float(seqs * 2 * tokens[s] * c * head_out)
    by_scale_layer.append(tuple(layer_flops))
    by_scale_component.append({k: float(v) for k, v in comp.items()})

  by_scale = tuple(sum(d.values()) for d in by_scale_component)
  by_component = {k: sum(d[k] for d in by_scale_component)
                  for k in COMPONENTS}
  return PlanFlops(total=sum(by_scale), by_scale=by_scale,
                   by_scale_layer=tuple(by_scale_layer),
                   by_component=by_component,
                   by_scale_component=tuple(by_scale_component))


def dense_flops(cfg: config_lib.TransformerConfig, **kwargs) -> PlanFlops:
  """`plan_flops` of the dense plan."""
  return plan_flops(plan_lib.dense_plan(cfg), cfg, **kwargs)


def speedup(plan: plan_lib.SparsityPlan, cfg: config_lib.TransformerConfig,
            *, baseline: Optional[plan_lib.SparsityPlan] = None,
            with_decode: bool = False, tokenizer: Any = None,
            **kwargs) -> float:
  """FLOP reduction of `plan` against `baseline` (default: dense).

  Args:
    plan: the plan.
    cfg: the model.
    baseline: the reference plan; dense when None.
    with_decode: add the tokenizer decode to both sides (it does not shrink:
      an early exit still decodes the full-size latent).
    tokenizer: its stride sets the decoded image size (`image_size`).
    **kwargs: forwarded to `plan_flops`.

  Returns:
    baseline FLOPs / plan FLOPs.
  """
  base = plan_lib.dense_plan(cfg) if baseline is None else baseline
  extra = decode_flops(cfg, tokenizer=tokenizer) if with_decode else 0.0
  return ((plan_flops(base, cfg, **kwargs).total + extra)
          / (plan_flops(plan, cfg, **kwargs).total + extra))


def image_size(cfg: config_lib.TransformerConfig,
               tokenizer: Any = None) -> Tuple[int, int]:
  """Output image (H, W) in pixels: the final latent grid times the
  tokenizer's stride (`tokenizer.stride`, e.g. 4 for the emoji model's BSQ
  VAE); without a tokenizer 16 pixels per token side (every public
  variant)."""
  stride = getattr(tokenizer, "stride", None)
  if stride is None:
    h, w = cfg.schedule[-1]
    return h * PIXELS_PER_TOKEN_SIDE, w * PIXELS_PER_TOKEN_SIDE
  h, w = config_lib.vae_grid(cfg)
  return h * stride, w * stride


def decode_flops(cfg: config_lib.TransformerConfig, *,
                 image_hw: Optional[Tuple[int, int]] = None,
                 tokenizer: Any = None) -> float:
  """Tokenizer decode FLOPs for one image (measured constants, see above).

  Args:
    cfg: the model; its style picks the tokenizer (VAR: VQVAE, Infinity: BSQ).
    image_hw: output (H, W); default `image_size(cfg, tokenizer)`.
    tokenizer: the tokenizer config (its stride sets the image size).

  Returns:
    FLOPs of one decode, scaled from the measured reference by pixel count.
  """
  h, w = image_size(cfg, tokenizer) if image_hw is None else image_hw
  if cfg.style == "var":
    return VQVAE_DECODE_FLOPS_256 * (h * w) / (256 * 256)
  return BSQ_DECODE_FLOPS_1024 * (h * w) / (1024 * 1024)


def format_flops(result: PlanFlops, plan: plan_lib.SparsityPlan) -> str:
  """A per-scale table in TFLOP, laid out like ARCHITECTURES §E.1."""
  lines = [f"{'scale':>8} {'tokens':>7} " + " ".join(
      f"{k:>10}" for k in COMPONENTS) + f" {'total':>9} {'%':>6}"]
  for s, (h, w) in enumerate(plan.schedule):
    comp = result.by_scale_component[s]
    share = 100 * result.by_scale[s] / result.total if result.total else 0.0
    lines.append(f"{f'{h}x{w}':>8} {h * w:>7} " + " ".join(
        f"{comp[k] / 1e12:>10.3f}" for k in COMPONENTS)
                 + f" {result.by_scale[s] / 1e12:>9.3f} {share:>6.1f}")
  comps: Dict[str, float] = dict(result.by_component)
  lines.append(f"{'total':>8} {'':>7} " + " ".join(
      f"{comps[k] / 1e12:>10.3f}" for k in COMPONENTS)
               + f" {result.total / 1e12:>9.3f}")
  return "\n".join(lines)
