"""A plain NumPy float64 reference of whole sparse generation (SPEC §3).

Written from the SPEC, not from the sampler: it imports nothing of
`toprovar_jax` and shares with the sampler only the model's parameters (and,
for VAR, the tokenizer's next-scale input features, see below). Everything
is explicit and unbatched over layers:

  * one Python list of (k, v) blocks per layer: an F layer appends the keys
    of all N_s tokens of the scale, an S layer those of its K_s kept tokens,
    an X layer nothing; a query attends to the concatenation of its layer's
    list (earlier scales) and the current call's keys;
  * kept sets from the scorers of SPEC §3 (entropy from this scale's probe or
    the previous scale's probe area-resized; FastVAR frequency on the stream
    entering the first S layer or every sub-layer), sorted ascending,
    shared from the conditional rows or chosen per row (`share_cfg`);
  * restore `passthrough` (pruned rows untouched) or `cached` (the branch
    outputs of scale `cache_from`, area-resized, with the fresh outputs of
    kept tokens written over them);
  * `guidance` False drops the unconditional rows (SkipVAR);
  * `exit_scale`: only the scales before it run; the latent after the last
    generated scale is what is decoded.

Guided logits, kept sets (in the order they are chosen) and the latent come
back, to be compared with the sampler (tests/sampling/sparse_reference_test).

The next-scale input: Infinity's (bilinear sums of ±1/√d bit codes) is
computed here. VAR's goes through the VQVAE codebook, bicubic up-sampling and
φ convs; the reference takes it from a callback (`var_inputs`) that the test
builds on the tokenizer. With forced tokens those features depend only on
the forced tokens, never on what this reference checks.

Dimension letters: B batch, R rows (2B while guided), N tokens of a scale,
K kept tokens, C width, H heads, D head dim, T text tokens.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import numpy as np


def _f64(tree):
  if isinstance(tree, dict):
    return {k: _f64(v) for k, v in tree.items()}
  return np.asarray(tree, np.float64)


def _dense(x, p):
  out = x @ p["kernel"]
  return out + p["bias"] if "bias" in p else out


def _ln(x, eps):
  m = x.mean(-1, keepdims=True)
  return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + eps)


def _silu(x):
  return x / (1.0 + np.exp(-x))


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _l2n(x):
  return x / np.maximum(np.sqrt((x**2).sum(-1, keepdims=True)), 1e-12)


def _softmax_attend(q, k, v, scale, key_mask=None):
  """q (R, N, H, D), k/v (R, M, H, D) -> out (R, N, H, D), entropy (R, N)."""
  s = np.einsum("rnhd,rmhd->rhnm", q, k) * scale
  if key_mask is not None:
    s = np.where(key_mask[:, None, None, :], s, -np.inf)
  s = s - s.max(-1, keepdims=True)
  p = np.exp(s)
  p /= p.sum(-1, keepdims=True)
  logp = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), 0.0)
  ent = -(p * logp).sum(-1).mean(1)
  return np.einsum("rhnm,rmhd->rnhd", p, v), ent


def area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """Adaptive average pooling (torch 'area') as an (n_out, n_in) matrix."""
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    a, z = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
    m[i, a:z] = 1.0 / (z - a)
  return m


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """Torch bilinear, align_corners=False, no antialias, (n_out, n_in)."""
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = min(int(math.floor(src)), n_in - 1)
    i1 = min(i0 + 1, n_in - 1)
    lam = src - i0
    m[i, i0] += 1 - lam
    m[i, i1] += lam
  return m


def resize_map(t, src_hw, dst_hw, matrix=area_matrix):
  """(R, h'w', ...) token map -> (R, hw, ...) on the destination grid."""
  r = t.shape[0]
  g = t.reshape((r,) + tuple(src_hw) + t.shape[2:])
  g = np.einsum("ia,rab...->rib...", matrix(src_hw[0], dst_hw[0]), g)
  g = np.einsum("jb,rib...->rij...", matrix(src_hw[1], dst_hw[1]), g)
  return g.reshape((r, dst_hw[0] * dst_hw[1]) + t.shape[2:])


def rope_tables(cfg):
  """(L, D/2) cos, sin at the star-style positions (SPEC §1, ARCH B.3)."""
  hf, wf = cfg.rope_grid
  pos = []
  for h, w in cfg.schedule:
    # Positions in float32 and rounded half to even, as torch.round.
    r = np.round(np.arange(h, dtype=np.float32) * np.float32(hf / h))
    c = np.round(np.arange(w, dtype=np.float32) * np.float32(wf / w))
    pos += [(a, b) for a in r for b in c]
  pos = np.array(pos, np.float64)
  half = cfg.head_dim // 2
  inv = 1.0 / (cfg.rope_base ** (np.arange(0, half, 2) / half))
  ang = np.concatenate([np.outer(pos[:, 0], inv), np.outer(pos[:, 1], inv)], 1)
  return np.cos(ang), np.sin(ang)


def _rope(x, cos, sin):
  """Interleaved pairs (2i, 2i+1); cos/sin (R, N, D/2)."""
  c, s = cos[:, :, None, :], sin[:, :, None, :]
  out = np.empty_like(x)
  out[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
  out[..., 1::2] = x[..., 0::2] * s + x[..., 1::2] * c
  return out


def _top_k_sorted(scores, k):
  """Rows' k largest scores' indices, ascending (R, K)."""
  return np.sort(np.argsort(-scores, axis=1, kind="stable")[:, :k], axis=1)


class Reference:
  """One model's parameters in float64 and the pieces of its forward."""

  def __init__(self, cfg, params):
    self.cfg = cfg
    self.stem = _f64(params["stem"])
    blocks = _f64(params["blocks"])
    leaves = lambda t, l: ({k: leaves(v, l) for k, v in t.items()}
                           if isinstance(t, dict) else t[l])
    self.blocks = [leaves(blocks, l) for l in range(cfg.depth)]
    self.cos = self.sin = None
    if cfg.style == "infinity":
      self.cos, self.sin = rope_tables(cfg)

  # -- conditioning and stem ---------------------------------------------------

  def condition(self, labels=None, text=None, text_mask=None):
    """Rows [cond; uncond]: (cond (R, C), x0 (R, 1, C), per-layer ada
    (R, 6, C) list, text K/V per layer, key mask (R, T))."""
    cfg, st = self.cfg, self.stem
    c = cfg.width
    if cfg.style == "var":
      lab = np.concatenate([labels, np.full_like(labels, cfg.num_classes)])
      cond = st["class_emb"]["embedding"][lab]
      x0 = (cond + st["pos_start"] + st["lvl_embed"]["embedding"][0]
            + st["pos_1LC"][0])[:, None]
      ada = [_dense(_silu(cond), b["ada_lin"]).reshape(-1, 6, c)
             for b in self.blocks]
      return cond, x0, ada, None, None
    text = np.asarray(text, np.float64)
    t = text.shape[1]
    unc = np.broadcast_to(st["cfg_uncond"][:t], text.shape)
    tx = np.concatenate([text, unc])
    mask = np.concatenate([text_mask, text_mask]).astype(bool)
    tn = tx / np.sqrt((tx**2).mean(-1, keepdims=True) + cfg.norm_eps)
    tn = tn * st["text_norm"]
    hp = st["pool_q"].shape[0]
    dp = c // hp
    kv = tn @ st["pool_kv"]["kernel"]
    kv[..., c:] += st["pool_v_bias"]
    kv = kv.reshape(tn.shape[0], t, 2, hp, dp)
    s = np.einsum("hd,rthd->rht", st["pool_q"], kv[:, :, 0]) / math.sqrt(dp)
    s = np.where(mask[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    pooled = np.einsum("rht,rthd->rhd", p, kv[:, :, 1]).reshape(-1, c)
    cond = _dense(pooled, st["pool_proj"])
    x0 = (cond + st["pos_start"] + st["lvl_embed"]["embedding"][0])[:, None]
    tproj = _dense(_gelu_tanh(_dense(tn, st["text_proj_0"])),
                   st["text_proj_2"])
    shared = _dense(_silu(cond), st["shared_ada_lin"]).reshape(-1, 6, c)
    ada = [shared + b["ada_gss"] for b in self.blocks]
    h, d = cfg.num_heads, cfg.head_dim
    tkv = []
    for b in self.blocks:
      m = tproj @ b["ca"]["mat_kv"]["kernel"]
      m[..., c:] += b["ca"]["v_bias"]
      m = m.reshape(-1, t, 2, h, d)
      tkv.append((m[:, :, 0], m[:, :, 1]))
    return cond, x0, ada, tkv, mask

  def embed(self, feat, si):
    cfg, st = self.cfg, self.stem
    x = _dense(np.asarray(feat, np.float64), st["word_embed"])
    x = x + st["lvl_embed"]["embedding"][si]
    if cfg.style == "var":
      a, b = cfg.scale_offsets[si], cfg.scale_offsets[si + 1]
      x = x + st["pos_1LC"][a:b]
    return x

  def logits(self, x, cond):
    c = self.cfg.width
    ss = _dense(_silu(cond), self.stem["head_nm"])[:, None]
    h = _ln(x, self.cfg.norm_eps) * (1 + ss[..., :c]) + ss[..., c:]
    return _dense(h, self.stem["head"])

  # -- sub-layers ---------------------------------------------------------------

  def self_attention(self, l, h, pos, prefix):
    """h (R, n, C) at token positions pos (R, n) of the scale's RoPE rows;
    prefix: the layer's earlier (k, v) blocks. Returns out, k, v, entropy."""
    cfg, p = self.cfg, self.blocks[l]["sa"]
    c, nh, d = cfg.width, cfg.num_heads, cfg.head_dim
    qkv = h @ p["mat_qkv"]["kernel"]
    r, n = h.shape[:2]
    q = (qkv[..., :c] + p["q_bias"]).reshape(r, n, nh, d)
    k = qkv[..., c:2 * c].reshape(r, n, nh, d)
    v = (qkv[..., 2 * c:] + p["v_bias"]).reshape(r, n, nh, d)
    scale = np.exp(np.minimum(p["scale_mul"], math.log(100.0)))
    q = _l2n(q) * scale[:, None]
    k = _l2n(k)
    if self.cos is not None:
      q = _rope(q, self.cos[pos], self.sin[pos])
      k = _rope(k, self.cos[pos], self.sin[pos])
    ks = np.concatenate([kk for kk, _ in prefix] + [k], 1)
    vs = np.concatenate([vv for _, vv in prefix] + [v], 1)
    o, ent = _softmax_attend(q, ks, vs, 1.0)
    return _dense(o.reshape(r, n, c), p["proj"]), k, v, ent

  def cross_attention(self, l, x, tkv, mask):
    cfg, b = self.cfg, self.blocks[l]
    r, n, c = x.shape
    xn = _ln(x, cfg.norm_eps) * b["ca_norm"]["scale"] + b["ca_norm"]["bias"]
    q = _dense(xn, b["ca"]["mat_q"]).reshape(r, n, cfg.num_heads, -1)
    o, _ = _softmax_attend(q, tkv[0], tkv[1], 1 / math.sqrt(cfg.head_dim),
                           mask)
    return _dense(o.reshape(r, n, c), b["ca"]["proj"])

  def ffn(self, l, h):
    f = self.blocks[l]["ffn"]
    return _dense(_gelu_tanh(_dense(h, f["fc1"])), f["fc2"])


def _select(scores, k, share_cfg, guided, b):
  if share_cfg and guided:
    idx = _top_k_sorted(scores[:b], k)
    return np.concatenate([idx, idx])
  return _top_k_sorted(scores, k)


def _frequency(x):
  return ((x - x.mean(1, keepdims=True)) ** 2).sum(-1)


def generate(cfg, params, plan, *, forced, cfg_scale: float, tau: float,
             labels=None, text=None, text_mask=None,
             var_inputs: Optional[Callable] = None) -> Dict:
  """Whole sparse generation with forced choices.

  Args:
    cfg: the model's TransformerConfig; params its parameters; plan a
      validated SparsityPlan.
    forced: the choices of every scale: VAR (B, L) int, Infinity (B, L, d)
      bits.
    cfg_scale, tau: guidance scale and Infinity's temperature.
    labels (B,) / text (B, T, Ct) + text_mask (B, T): conditioning.
    var_inputs: VAR only: fn(si) -> (B, N_si, Cvae) next-scale input of scale
      si ≥ 1 from the forced tokens of scales < si.
  Returns:
    dict(logits=[(B, N_s, V) guided logits per generated scale],
         kept=[(R, K) kept indices, in the order they are chosen],
         margins=[per choice, the smallest gap between the K-th and the
           (K+1)-th score over rows],
         latent=Infinity's summed codes (B, Hf, Wf, d) after the last
         generated scale, or None for VAR).
  """
  ref = Reference(cfg, params)
  forced = np.asarray(forced)
  b = forced.shape[0]
  cond, x, ada, tkv, tmask = ref.condition(labels, text, text_mask)
  guided = True
  kv: List[list] = [[] for _ in range(cfg.depth)]
  branches: Dict[int, Dict[int, list]] = {}
  prev = None  # (entropy (R, N), hw) of the last probe
  logits_out, kept_out, margins = [], [], []
  off = cfg.scale_offsets
  summed = None
  if cfg.style == "infinity":
    hf, wf = cfg.schedule[-1]
    summed = np.zeros((b, hf, wf, cfg.latent_dim))
  cache_scales = {p.cache_from for p in plan.scales if p.restore == "cached"}

  for si, sp in enumerate(plan.scales):
    hw, n = cfg.schedule[si], cfg.tokens_per_scale[si]
    if guided and not sp.guidance:
      guided = False
      cond, x = cond[:b], x[:b]
      ada = [a[:b] for a in ada]
      if tkv is not None:
        tkv = [(k[:b], v[:b]) for k, v in tkv]
        tmask = tmask[:b]
      kv = [[(k[:b], v[:b]) for k, v in blocks] for blocks in kv]
      branches = {s: {l: [t[:b] for t in br] for l, br in d.items()}
                  for s, d in branches.items()}
      if prev is not None:
        prev = (prev[0][:b], prev[1])
    r = x.shape[0]
    rows = np.arange(r)[:, None]
    base = off[si] + np.arange(n)
    probe_ent = None
    idx = None

    def pick(x_now):
      nonlocal idx
      if sp.select == "scale" and idx is not None:
        return idx
      if sp.scorer == "frequency":
        scores = _frequency(x_now)
      elif sp.scorer == "entropy":
        ent = (probe_ent if sp.entropy_from == "probe" else
               resize_map(prev[0], prev[1], hw))
        scores = -ent
      else:  # "none" (keep = N): every token, nothing scored
        return np.broadcast_to(np.arange(n), (r, n))
      chosen = _select(scores, sp.keep, sp.share_cfg, guided, b)
      kept_out.append(chosen)
      # How far the last kept score is from the first dropped one: the
      # test needs it well above fp32 noise for the kept sets to be defined.
      used = scores[:b] if sp.share_cfg and guided else scores
      srt = -np.sort(-used, axis=1)
      margins.append(float(np.min(srt[:, sp.keep - 1] - srt[:, sp.keep]))
                     if sp.keep < n else math.inf)
      if sp.select == "scale":
        idx = chosen
      return chosen

    for l, letter in enumerate(sp.layers):
      if letter == "X":
        continue
      g1, g2, s1, s2, b1, b2 = (ada[l][:, i, None, :] for i in range(6))
      eps = cfg.norm_eps
      if letter == "F":
        pos = np.broadcast_to(base, (r, n))
        h = _ln(x, eps) * (1 + s1) + b1
        a, k, v, ent = ref.self_attention(l, h, pos, kv[l])
        kv[l].append((k, v))
        if l == sp.probe_layer:
          probe_ent = ent
        br = [a * g1]
        x = x + br[-1]
        if cfg.style == "infinity":
          br.append(ref.cross_attention(l, x, tkv[l], tmask))
          x = x + br[-1]
        br.append(ref.ffn(l, _ln(x, eps) * (1 + s2) + b2) * g2)
        x = x + br[-1]
        if si in cache_scales:
          branches.setdefault(si, {})[l] = br
        continue
      # "S": every sub-layer gathers its kept rows from the full stream.
      cached = None
      if sp.restore == "cached":
        src = sp.cache_from
        cached = [resize_map(t, cfg.schedule[src], hw)
                  for t in branches[src][l]]

      def restore(x_now, i, out, j):
        if cached is None:
          x_now = x_now.copy()
          x_now[rows, i] += out
          return x_now
        full = cached[j].copy()
        full[rows, i] = out
        return x_now + full

      i = pick(x)
      h = _ln(x[rows, i], eps) * (1 + s1) + b1
      a, k, v, _ = ref.self_attention(l, h, off[si] + i, kv[l])
      kv[l].append((k, v))
      x = restore(x, i, a * g1, 0)
      j = 1
      if cfg.style == "infinity":
        i = pick(x)
        x = restore(x, i, ref.cross_attention(l, x[rows, i], tkv[l], tmask), 1)
        j = 2
      i = pick(x)
      x = restore(x, i, ref.ffn(l, _ln(x[rows, i], eps) * (1 + s2) + b2) * g2,
                  j)

    if probe_ent is not None:
      prev = (probe_ent, hw)
    lg = ref.logits(x, cond)
    if cfg.style == "var":
      t = cfg_scale * si / (cfg.num_scales - 1)
      guided_lg = (1 + t) * lg[:b] - t * lg[b:] if guided else lg
    else:
      z = lg / tau
      guided_lg = cfg_scale * z[:b] + (1 - cfg_scale) * z[b:] if guided else z
    logits_out.append(guided_lg)

    choice = forced[:, off[si]:off[si + 1]]
    if cfg.style == "infinity":
      d = cfg.latent_dim
      codes = ((2.0 * choice - 1.0) / math.sqrt(d)).reshape(b, *hw, d)
      if si == cfg.num_scales - 1:
        summed = summed + codes
      else:
        summed = summed + resize_map(
            codes.reshape(b, n, d), hw, summed.shape[1:3],
            bilinear_matrix).reshape(summed.shape)
    if si < len(plan.scales) - 1:
      nh, nw = cfg.schedule[si + 1]
      if cfg.style == "infinity":
        feat = resize_map(summed.reshape(b, -1, cfg.latent_dim),
                          summed.shape[1:3], (nh, nw), bilinear_matrix)
      else:
        feat = np.asarray(var_inputs(si + 1), np.float64)
      x = ref.embed(feat, si + 1)
      if guided:
        x = np.concatenate([x, x])
  return dict(logits=logits_out, kept=kept_out, margins=margins,
              latent=summed)
