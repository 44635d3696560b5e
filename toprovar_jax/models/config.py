"""Static model configuration and the one variant table.

Every architecture number lives here, once. Configs (`configs/*.py`) name a
variant; the experiments turn it into these frozen dataclasses at the boundary,
and everything inside jit sees only hashable, frozen objects (STYLE.md §9.13).

Dimension letters used across the package:
  B batch, S scales, s scale index, N_s tokens of scale s, K_s kept tokens,
  L layers (depth) or total tokens where stated, C width, H heads, D head dim,
  d bits per token (Infinity), V codebook size (VAR), T text tokens.

Sources: docs/ARCHITECTURES.md A.1 (VAR), B.1/B.5 (Infinity); reference
README §2 (tiny configs of the golden files).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

Schedule = Tuple[Tuple[int, int], ...]

# VAR token schedules (square p x p maps), ARCHITECTURES A.1.
VAR_PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
VAR_PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
# Infinity 1:1 template at 1M pixels (13 scales), ARCHITECTURES B.5. The
# 0.06M / 0.25M / 0.60M budgets are its first 7 / 10 / 12 scales.
INFINITY_1M_SIDES = (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)


# Infinity's 1M-pixel templates by h/w ratio (official `dynamic_resolution`):
# the budgets 0.06M / 0.25M / 0.60M / 1M use their first 7 / 10 / 12 / 13
# scales, and RoPE positions of every budget are rescaled onto the last (1M)
# grid of the template (ARCHITECTURES B.3, B.5). Ratios below 1 are the
# transposes.
INFINITY_TEMPLATES_1M = {
    1.0: ((1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20),
          (24, 24), (32, 32), (40, 40), (48, 48), (64, 64)),
    1.25: ((1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16),
           (25, 20), (30, 24), (35, 28), (45, 36), (55, 44), (70, 56)),
    1.333: ((1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15),
            (24, 18), (28, 21), (36, 27), (48, 36), (60, 45), (72, 54)),
    1.5: ((1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18),
          (33, 22), (39, 26), (48, 32), (63, 42), (78, 52)),
    1.75: ((1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12),
           (28, 16), (35, 20), (42, 24), (56, 32), (70, 40), (84, 48)),
    2.0: ((1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15),
          (38, 19), (46, 23), (60, 30), (74, 37), (90, 45)),
    2.5: ((1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10),
          (30, 12), (40, 16), (50, 20), (65, 26), (80, 32), (100, 40)),
    3.0: ((1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12),
          (45, 15), (54, 18), (72, 24), (90, 30), (111, 37)),
}


def infinity_rope_grid(schedule: Schedule) -> Tuple[int, int]:
  """Final 1M-template grid of the template that `schedule` is a prefix of."""
  schedule = tuple(tuple(int(v) for v in hw) for hw in schedule)
  for tpl in INFINITY_TEMPLATES_1M.values():
    for cand in (tpl, tuple((w, h) for h, w in tpl)):
      if cand[:len(schedule)] == schedule:
        return cand[-1]
  raise ValueError(
      f"schedule: {schedule} is not a prefix of any Infinity 1M template")


# Official pixel budgets: how many scales of a 1M template each one uses
# (`dynamic_resolution_h_w[h_div_w][pn]`, ARCHITECTURES B.5).
INFINITY_BUDGETS = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}


def infinity_templates() -> dict:
  """All 15 official h/w templates, {h_div_w: 1M schedule}.

  The 8 of `INFINITY_TEMPLATES_1M` plus the transposes of the 7 non-square
  ones, keyed as the official code keys them (int(1000 / r) / 1000: 0.8,
  0.75, 0.666, 0.571, 0.5, 0.4, 0.333).
  """
  out = {}
  for ratio, tpl in INFINITY_TEMPLATES_1M.items():
    out[ratio] = tpl
    if ratio != 1.0:
      out[int(1 / ratio * 1000) / 1000] = tuple((w, h) for h, w in tpl)
  return dict(sorted(out.items()))


def infinity_schedule(h_div_w: float, pixels: str
                      ) -> Tuple[Schedule, Tuple[int, int]]:
  """(schedule, rope_grid) of an official h/w template at a pixel budget.

  RoPE positions of every budget are rescaled onto the template's last 1M
  grid, as the official star-style table does (ARCHITECTURES B.3).

  Args:
    h_div_w: one of the 15 template ratios (within 0.002, so 2/3 names
      0.666).
    pixels: '0.06M' | '0.25M' | '0.60M' | '1M'.

  Raises:
    ValueError: an unknown ratio or budget (names the field, lists the
      official values).
  """
  if pixels not in INFINITY_BUDGETS:
    raise ValueError(f"model.pixels: {pixels!r} is not an official budget; "
                     f"known: {list(INFINITY_BUDGETS)}")
  templates = infinity_templates()
  ratio = min(templates, key=lambda r: abs(r - float(h_div_w)))
  if abs(ratio - float(h_div_w)) > 2e-3:
    raise ValueError(f"model.h_div_w: {h_div_w} is not an official h/w "
                     f"template; known: {list(templates)}")
  tpl = templates[ratio]
  return tpl[:INFINITY_BUDGETS[pixels]], tpl[-1]


def describe_schedule(schedule: Schedule) -> str:
  """'h/w 1.5 at 0.25M (10 scales, last 39x26)' for an official template
  prefix, else 'a custom schedule (S scales, last hxw)'."""
  schedule = tuple(tuple(int(v) for v in hw) for hw in schedule)
  last = f"{len(schedule)} scales, last {schedule[-1][0]}x{schedule[-1][1]}"
  for ratio, tpl in infinity_templates().items():
    for pixels, n in INFINITY_BUDGETS.items():
      if tpl[:n] == schedule:
        return f"h/w {ratio:g} at {pixels} ({last})"
  return f"a custom schedule ({last})"


def at_resolution(cfg: "TransformerConfig", h_div_w: float,
                  pixels: str) -> "TransformerConfig":
  """An Infinity variant at another official h/w template and budget.

  The parameters do not depend on the schedule (RoPE is computed, the
  level embedding has 15 rows), so the variant's weights run unchanged.

  Raises:
    ValueError: a VAR variant, or see `infinity_schedule`.
  """
  if cfg.style != "infinity":
    raise ValueError(f"model.pixels: {cfg.name} is a VAR model; only "
                     "Infinity variants take h_div_w / pixels")
  schedule, grid = infinity_schedule(h_div_w, pixels)
  return dataclasses.replace(cfg, schedule=schedule, rope_grid=grid)


def square_schedule(sides) -> Schedule:
  return tuple((int(p), int(p)) for p in sides)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig:
  """One next-scale transformer (VAR or Infinity conditioning style).

  Attributes:
    name: variant name.
    style: "var" (class label, per-block AdaLN, abs positions) or "infinity"
      (text features, shared AdaLN + ada_gss, 2-D RoPE, cross-attention).
    depth: number of blocks.
    width: C.
    num_heads: H of self- and cross-attention.
    mlp_hidden: FFN hidden width.
    schedule: token grid (h, w) of every scale, coarse to fine.
    latent_dim: per-token input feature size (VAR: Cvae; Infinity: d bits,
      i.e. 4x the VAE code dim when `patchify`).
    vocab_size: VAR codebook size V (head outputs V logits). Unused for
      Infinity, whose head outputs 2 * latent_dim logits (bit pairs).
    num_classes: VAR classes; the class table has num_classes + 1 rows
      (the last is the null / unconditional class).
    shared_aln: one shared AdaLN projection plus per-block `ada_gss`.
    num_level_embeds: rows of the level (scale) embedding table.
    text_dim: Ct5, width of the raw text features (Infinity).
    text_maxlen: rows of the learned `cfg_uncond` text (Infinity).
    rope_grid: (H_f, W_f) grid onto which RoPE positions are rescaled (the
      last scale of the 1M template for this aspect ratio).
    rope_base: RoPE base frequency.
    patchify: Infinity-8B style 2x2 spatial patchify of the VAE latent.
    norm_eps: LayerNorm / RMSNorm epsilon.
    text_pool_heads: heads of the attention-pooled SOS; 0 = the official rule
      Ct // (128, or 64 above C = 4096). Our own models may need another
      count so that C divides evenly (the emoji model: Ct = 384, C = 256).
  """
  name: str
  style: str
  depth: int
  width: int
  num_heads: int
  mlp_hidden: int
  schedule: Schedule
  latent_dim: int
  vocab_size: int = 0
  num_classes: int = 0
  shared_aln: bool = False
  num_level_embeds: int = 0
  text_dim: int = 0
  text_maxlen: int = 0
  rope_grid: Tuple[int, int] = (0, 0)
  rope_base: float = 10000.0
  patchify: bool = False
  norm_eps: float = 1e-6
  text_pool_heads: int = 0

  def __post_init__(self):
    if self.style not in ("var", "infinity"):
      raise ValueError(f"TransformerConfig.style: unknown style {self.style!r}")
    if self.width % self.num_heads:
      raise ValueError(
          f"TransformerConfig.width: {self.width} is not divisible by "
          f"num_heads={self.num_heads}")
    if self.style == "infinity" and (
        not self.pool_num_heads or self.width % self.pool_num_heads):
      raise ValueError(
          f"TransformerConfig.text_pool_heads: {self.pool_num_heads} pooling "
          f"heads do not divide width {self.width}")

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def num_scales(self) -> int:
    return len(self.schedule)

  @property
  def tokens_per_scale(self) -> Tuple[int, ...]:
    return tuple(h * w for h, w in self.schedule)

  @property
  def scale_offsets(self) -> Tuple[int, ...]:
    """Start of every scale in the flattened sequence (len S + 1)."""
    out = [0]
    for n in self.tokens_per_scale:
      out.append(out[-1] + n)
    return tuple(out)

  @property
  def seq_len(self) -> int:
    return self.scale_offsets[-1]

  @property
  def head_out(self) -> int:
    """Logits per token: V for VAR, 2 per bit for Infinity."""
    return self.vocab_size if self.style == "var" else 2 * self.latent_dim

  @property
  def pool_head_dim(self) -> int:
    # Official TextAttentivePool: head_dim 64 above C = 4096, else 128, and
    # heads = Ct5 // head_dim (ARCHITECTURES B.2).
    return 64 if self.width > 4096 else 128

  @property
  def pool_num_heads(self) -> int:
    if self.text_pool_heads:
      return self.text_pool_heads
    return self.text_dim // self.pool_head_dim


@dataclasses.dataclass(frozen=True, kw_only=True)
class VQVAEConfig:
  """VAR's multi-scale VQVAE (ARCHITECTURES A.5)."""
  ch: int = 160
  ch_mult: Tuple[int, ...] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  z_channels: int = 32
  vocab_size: int = 4096
  share_quant_resi: int = 4
  quant_resi: float = 0.5
  patch_nums: Tuple[int, ...] = VAR_PATCH_NUMS_256
  in_channels: int = 3

  @property
  def phi_index(self) -> Tuple[int, ...]:
    """Which shared phi conv each scale uses.

    The official rule picks the tick of linspace(1/12, 11/12, 4) nearest to
    k / (K - 1); k = 2 and k = 7 of a 10-scale schedule are exact ties broken by
    float rounding, which float64 numpy reproduces (ARCHITECTURES A.5).
    """
    import numpy as np  # local: config stays import-light
    k = len(self.patch_nums)
    n = self.share_quant_resi
    # The official tick spacing is 1/(3n) for n = 4 and 1/(2n) otherwise.
    if n == 4:
      ticks = np.linspace(1 / 3 / n, 1 - 1 / 3 / n, n)
    else:
      ticks = np.linspace(1 / 2 / n, 1 - 1 / 2 / n, n)
    return tuple(int(np.argmin(np.abs(ticks - (i / (k - 1))))) for i in range(k))


@dataclasses.dataclass(frozen=True, kw_only=True)
class BSQConfig:
  """Infinity's BSQ VAE (ARCHITECTURES B.4).

  `padding`: how every conv pads the border, 'zeros' (the official VAE) or
  'edge' (copies of the edge pixels: a flat input stays flat; the emoji
  model, `models.bsq_vae` module docstring).
  """
  base_ch: int = 128
  ch_mult: Tuple[int, ...] = (1, 2, 4, 4, 4)
  num_res_blocks: int = 2
  codebook_dim: int = 32
  in_channels: int = 3
  padding: str = "zeros"

  def __post_init__(self):
    if self.padding not in ("zeros", "edge"):
      raise ValueError(f"BSQConfig.padding: {self.padding!r} is not 'zeros' "
                       "or 'edge'")

  @property
  def stride(self) -> int:
    return 2 ** (len(self.ch_mult) - 1)


def _var(depth: int, patch_nums=VAR_PATCH_NUMS_256, shared_aln=False,
         name=None, vocab_size=4096, latent_dim=32) -> TransformerConfig:
  # build_vae_var: heads = depth, C = 64 * depth, MLP 4C (ARCHITECTURES A.1).
  width = 64 * depth
  return TransformerConfig(
      name=name or f"var_d{depth}", style="var", depth=depth, width=width,
      num_heads=depth, mlp_hidden=4 * width,
      schedule=square_schedule(patch_nums), latent_dim=latent_dim,
      vocab_size=vocab_size, num_classes=1000, shared_aln=shared_aln,
      num_level_embeds=len(patch_nums))


def infinity_mlp_hidden(width: int, mlp_ratio: float = 4.0) -> int:
  """Official rule: round(C * ratio / 256) * 256."""
  return int(round(width * mlp_ratio / 256) * 256)


def _infinity(name, depth, width, num_heads, bits, patchify=False,
              sides=INFINITY_1M_SIDES, text_dim=2048, text_maxlen=512,
              rope_grid=(64, 64)) -> TransformerConfig:
  return TransformerConfig(
      name=name, style="infinity", depth=depth, width=width,
      num_heads=num_heads, mlp_hidden=infinity_mlp_hidden(width),
      schedule=square_schedule(sides), latent_dim=bits, shared_aln=True,
      num_level_embeds=15, text_dim=text_dim, text_maxlen=text_maxlen,
      rope_grid=rope_grid, patchify=patchify)


# The embedded emoji model, v2 (SPEC §8, issue 12): 13 scales to a 32x32
# grid, 2,304 tokens; the last three scales hold 81 % of them (Infinity-1M's
# 13 scales: 76 %) and the last step is Infinity's last ratio (24 -> 32 as
# 48 -> 64). Infinity's template at half its sides (... 16 20 24 32, 2,630
# tokens) was measured first: the main job took 112 s on the 2-core CPU
# where v1's took 52 s (BENCHMARKS.md), too close to its 2-minute limit.
# 7x7 is there to make the token count even: cuDNN's fused attention trains
# with a bias (the block-causal mask) only on even sequence lengths (2,304 =
# 36 x 64; without 7x7 it would be 2,255).
EMOJI_SIDES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32)
EMOJI_DEPTH, EMOJI_WIDTH, EMOJI_HEADS = 16, 192, 3


def config_lib_emoji() -> "TransformerConfig":
  # Head dim 64; MiniLM's 384-d text pools with 3 heads of 128 (the official
  # rule Ct // 128), which divide the width.
  return TransformerConfig(
      name="emoji", style="infinity", depth=EMOJI_DEPTH, width=EMOJI_WIDTH,
      num_heads=EMOJI_HEADS, mlp_hidden=infinity_mlp_hidden(EMOJI_WIDTH),
      schedule=square_schedule(EMOJI_SIDES), latent_dim=16, shared_aln=True,
      num_level_embeds=15, text_dim=384, text_maxlen=32,
      rope_grid=(EMOJI_SIDES[-1], EMOJI_SIDES[-1]), text_pool_heads=3)


# Model v1 (issue 4; weights in git history, toprovar_jax/assets/emoji/
# README.md): 10 scales to 16x16, 8 layers x 256, BSQ stride 8 with zero
# padding. Kept so that v1 can be evaluated beside v2.
EMOJI_V1_SIDES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)


def _emoji_v1() -> "TransformerConfig":
  return TransformerConfig(
      name="emoji_v1", style="infinity", depth=8, width=256, num_heads=4,
      mlp_hidden=infinity_mlp_hidden(256),
      schedule=square_schedule(EMOJI_V1_SIDES), latent_dim=16,
      shared_aln=True, num_level_embeds=15, text_dim=384, text_maxlen=32,
      rope_grid=(16, 16), text_pool_heads=4)


# The one variant table. Tiny variants are the golden-file configs
# (reference README §2) used by CPU tests.
VARIANTS = {
    "var_d16": _var(16),
    "var_d20": _var(20),
    "var_d24": _var(24),
    "var_d30": _var(30),
    # d36 runs at 512 px with shared AdaLN ("d36-s").
    "var_d36": _var(36, patch_nums=VAR_PATCH_NUMS_512, shared_aln=True),
    "infinity_2b": _infinity("infinity_2b", 32, 2048, 16, bits=32),
    # 8B: 14-bit BSQ latent at stride 8 with 2x2 patchify -> 56 bits a token.
    "infinity_8b": _infinity("infinity_8b", 40, 3584, 28, bits=56,
                             patchify=True),
    # The embedded default (SPEC §8), model v2: 128 px emoji, BSQ stride 4
    # -> 32×32 final grid, 13 scales, 16 layers × 192, MiniLM token features
    # (384-d) as text. Sized so that transformer + tokenizer decoder ship in
    # ≤ 30 MB of bf16 and the main job runs in ≤ 2 min on 2 CPU cores.
    "emoji": config_lib_emoji(),
    "emoji_v1": _emoji_v1(),
    "var_tiny": _var(2, name="var_tiny", vocab_size=256),
    "infinity_tiny": _infinity("infinity_tiny", 2, 256, 2, bits=16,
                               sides=INFINITY_1M_SIDES[:7], text_dim=256),
    # Test-only miniature of the emoji model (training and evaluation
    # tests): 32 px, 4 scales, 8x8 final grid; compiles in seconds on CPU.
    "_emoji_tiny": TransformerConfig(
        name="_emoji_tiny", style="infinity", depth=2, width=64, num_heads=2,
        mlp_hidden=128, schedule=square_schedule((1, 2, 4, 8)),
        latent_dim=8, shared_aln=True, num_level_embeds=15, text_dim=384,
        text_maxlen=16, rope_grid=(8, 8), text_pool_heads=2),
}

# Tokenizers that go with each transformer variant.
TOKENIZERS = {
    "var": VQVAEConfig(),
    "var_d36": VQVAEConfig(patch_nums=VAR_PATCH_NUMS_512),
    "infinity_2b": BSQConfig(codebook_dim=32),
    "infinity_8b": BSQConfig(codebook_dim=14, ch_mult=(1, 2, 4, 4)),
    # Stride 4 (two downsamplings), 16 bits a token, edge padding (no
    # border speck: models/bsq_vae.py).
    "emoji": BSQConfig(base_ch=32, ch_mult=(1, 2, 4), codebook_dim=16,
                       padding="edge"),
    "emoji_v1": BSQConfig(base_ch=32, ch_mult=(1, 2, 4, 4), codebook_dim=16),
    "var_tiny": VQVAEConfig(ch=32, vocab_size=256),
    "infinity_tiny": BSQConfig(base_ch=32, ch_mult=(1, 2, 2, 2, 2),
                               codebook_dim=16),
    # Stride 4, no encoder res-blocks: an 8x8 final grid at 32 px.
    "_emoji_tiny": BSQConfig(base_ch=32, ch_mult=(1, 1, 1), num_res_blocks=0,
                             codebook_dim=8),
}


def get_variant(name: str) -> TransformerConfig:
  try:
    return VARIANTS[name]
  except KeyError:
    raise ValueError(
        f"model.variant: unknown variant {name!r}; known: "
        f"{sorted(VARIANTS)}") from None


def get_tokenizer(name: str):
  """Tokenizer config for a transformer variant name."""
  if name in TOKENIZERS:
    return TOKENIZERS[name]
  cfg = get_variant(name)
  if cfg.style == "var":
    return TOKENIZERS["var"]
  raise ValueError(f"model.variant: no tokenizer registered for {name!r}")


def replace(cfg, **kw):
  return dataclasses.replace(cfg, **kw)


def vae_grid(cfg: TransformerConfig, s: Optional[int] = None) -> Tuple[int, int]:
  """Latent grid of the tokenizer at scale s (default: last)."""
  h, w = cfg.schedule[-1 if s is None else s]
  f = 2 if cfg.patchify else 1
  return h * f, w * f
