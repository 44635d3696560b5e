r"""Oracle: golden outputs of a tiny Infinity-8B-style model, official code.

Runs the public FoundationVision/Infinity code (a checkout at the commit of
shared/reference/README.md, passed as --src; nothing of it is copied here)
on the CPU with torch, the way shared/reference's files were made (its
README §1-5): official constructors, seeded random weights perturbed and
rounded to k·2^e, eval mode, 1 thread, deterministic algorithms. The model
has the 8B layout at tiny widths: `apply_spatial_patchify=1` (2x2 tokens of
4·14 = 56 bits), the 8B BSQ VAE layout (14 bits, stride 8: 4 levels,
patch_size 8; ch_mult [1, 1, 1, 2], base_ch 32), and a transformer of depth 2, width 128,
1 head of 128 (the 8B's head_dim), FFN 256, on the first 5 scales of the official
h/w 1.5 template (VAE latent 18x12, 144x96 px), so that non-square RoPE
rescaling is covered too. It also records the official RoPE positions of
all 15 templates at 1M.

Only arrays are written (tests/golden/infinity_8b_tiny{,_vae}.npz and its
json); `toprovar_jax.parity` reads them.

Stand-ins for this run (not upstream code): flash-attn's varlen kv-packed
call becomes an exact per-segment SDPA; `timm`'s DropPath / register_model
and torchvision are stubs (unused on these paths). The official
cross-attention casts fp32 q / kv to bf16 before flash-attn (README §5.1);
here each CrossAttention runs in float64 instead (its fp32 weights are exact
in fp64), so the stored logits are those of an fp32 port without the cast,
what `diag/*` holds in the shared references.

  python scripts/oracle/infinity_8b_tiny.py --src=/tmp/Infinity \
      --out=tests/golden
"""

import argparse
import hashlib
import json
import math
import os
import pathlib
import sys
import time
import types

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

COMMIT = "4c27bbb54a9918847a2fe56b0fbe31a8523791a1"
RATIO, NUM_SCALES = 1.5, 5
MODEL_KW = dict(depth=2, embed_dim=128, num_heads=1, drop_path_rate=0.1,
                mlp_ratio=2, block_chunks=2)
CONSTRUCTOR_KW = dict(
    text_channels=128, text_maxlen=256, shared_aln=True,
    raw_scale_schedule=None, checkpointing="full-block",
    customized_flash_attn=False, fused_norm=True, pad_to_multiplier=128,
    use_flex_attn=False, add_lvl_embeding_only_first_block=1,
    use_bit_label=1, rope2d_each_sa_layer=1, rope2d_normalized_by_hw=2,
    pn="0.06M", apply_spatial_patchify=1, inference_mode=True,
    train_h_div_w_list=[1.0])
# The 8B VAE's layout (3 downsamplings: stride 8, patch_size 8, 14 bits) at
# tiny widths: ch_mult [1, 1, 1, 2] instead of [1, 2, 4, 4] keeps the arrays
# under 2 MB (the official widths at base_ch 32 are 5.1 M parameters).
VAE_KW = dict(schedule_mode="dynamic", codebook_dim=14, codebook_size=2**14,
              patch_size=8, encoder_ch_mult=[1, 1, 1, 2],
              decoder_ch_mult=[1, 1, 1, 2])
# Weights are rounded to k·2^e with |k| <= K_MAX (the shared references use
# 127; 7 keeps these files small).
K_MAX = 7
BASE_CH = 32
TEXT_LENS = (5, 13)
CFG, TAU = 3.0, 0.5


def install_stand_ins():
  """flash_attn / timm / torchvision modules for the official imports."""

  def varlen_kvpacked(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                      max_seqlen_k, dropout_p=0.0, softmax_scale=None,
                      **_):
    out = torch.empty_like(q)
    for i in range(len(cu_seqlens_q) - 1):
      a, b = int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1])
      c, d = int(cu_seqlens_k[i]), int(cu_seqlens_k[i + 1])
      qi = q[a:b].transpose(0, 1)                     # H, Lq, c
      ki, vi = kv[c:d, 0].transpose(0, 1), kv[c:d, 1].transpose(0, 1)
      s = torch.einsum("hqc,hkc->hqk", qi, ki) * softmax_scale
      out[a:b] = torch.einsum("hqk,hkc->hqc", s.softmax(-1), vi
                              ).transpose(0, 1)
    return out

  def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None,
                      causal=False):
    raise NotImplementedError("self-attention runs through torch SDPA")

  fa = types.ModuleType("flash_attn")
  fa.flash_attn_func = flash_attn_func
  fa.flash_attn_varlen_kvpacked_func = varlen_kvpacked
  sys.modules["flash_attn"] = fa

  class DropPath(torch.nn.Module):
    def __init__(self, drop_prob=0.0):
      super().__init__()
      self.drop_prob = drop_prob

    def forward(self, x):
      return x  # eval(): identity

  timm = types.ModuleType("timm")
  layers = types.ModuleType("timm.models.layers")
  layers.DropPath = DropPath
  layers.drop_path = lambda x, *a, **k: x
  models = types.ModuleType("timm.models")
  models.layers = layers
  models.register_model = lambda f: f
  loss = types.ModuleType("timm.loss")
  loss.SoftTargetCrossEntropy = type("SoftTargetCrossEntropy",
                                     (torch.nn.Module,), {})
  timm.models, timm.loss = models, loss
  sys.modules.update({"timm": timm, "timm.models": models,
                      "timm.models.layers": layers, "timm.loss": loss})
  tv = types.ModuleType("torchvision")
  tv.transforms = types.ModuleType("torchvision.transforms")
  sys.modules.update({"torchvision": tv,
                      "torchvision.transforms": tv.transforms})


def fp64_cross_attention(basic):
  """Each CrossAttention (and the text pool's) runs in float64: no bf16."""
  original = basic.CrossAttention.forward

  def forward(self, q, ca_kv):
    kv, cu, max_k = ca_kv
    self.double()
    try:
      out = original(self, None if q is None else q.double(),
                     (kv.double(), cu, max_k))
    finally:
      self.float()
    return out.float()

  basic.CrossAttention.forward = forward


def rounded(t: torch.Tensor) -> torch.Tensor:
  """k·2^e with integer |k| <= K_MAX, one e per tensor (exact in fp32)."""
  m = float(t.abs().max())
  if m == 0:
    return t
  e = math.ceil(math.log2(m / K_MAX))
  return torch.round(t / 2.0 ** e).clamp(-K_MAX, K_MAX) * 2.0 ** e


def perturb_transformer(model, seed):
  g = torch.Generator().manual_seed(seed * 1000 + 22)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 2 and name.endswith(".weight") and "embed" not in name:
        std = 0.5 / math.sqrt(p.shape[1])
      else:
        std = 0.1
      p.add_(torch.randn(p.shape, generator=g) * std)
      p.copy_(rounded(p))


def init_vae(vae, seed):
  g = torch.Generator().manual_seed(seed * 1000 + 21)
  with torch.no_grad():
    for name, p in vae.named_parameters():
      if p.ndim >= 2:
        fan_in = int(np.prod(p.shape[1:]))
        p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
      elif ".norm." in name and name.endswith("weight"):
        p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
      elif ".norm." in name:
        p.copy_(0.1 * torch.randn(p.shape, generator=g))
      else:
        p.copy_(0.05 * torch.randn(p.shape, generator=g))
      p.copy_(rounded(p))


def rope_positions(table, head_dim, n):
  """(n, 2) int (row, col) recovered from an official (2,1,1,1,L,D/2)
  cos / sin table via its slowest frequency; checked by recomputation."""
  half = head_dim // 2
  inv = 1.0 / (10000 ** (torch.arange(0, half, 2, dtype=torch.int64
                                      ).float() / half))
  cos, sin = table[0].reshape(-1, half)[:n], table[1].reshape(-1, half)[:n]
  q = half // 2
  pos = []
  for col in (q - 1, half - 1):  # slowest row / column frequency
    ang = torch.atan2(sin[:, col].double(), cos[:, col].double())
    pos.append(torch.round(ang / float(inv[-1])).long())
  pos = torch.stack(pos, -1)
  ang = torch.cat([torch.outer(pos[:, 0].float(), inv),
                   torch.outer(pos[:, 1].float(), inv)], -1)
  err = max(float((torch.cos(ang) - cos).abs().max()),
            float((torch.sin(ang) - sin).abs().max()))
  assert err < 1e-5, err
  return pos.numpy().astype(np.int32)


def sha256_of_arrays(arrays):
  h = hashlib.sha256()
  for k in sorted(arrays):
    a = np.ascontiguousarray(arrays[k])
    h.update(k.encode())
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
  return h.hexdigest()


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--src", required=True,
                  help=f"FoundationVision/Infinity checkout at {COMMIT}")
  ap.add_argument("--out", required=True)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  t0 = time.time()
  torch.set_num_threads(1)
  torch.use_deterministic_algorithms(True)
  install_stand_ins()
  sys.path.insert(0, args.src)
  # pylint: disable=g-import-not-at-top
  from infinity.models import basic
  from infinity.models import infinity as infinity_mod
  from infinity.models.bsq_vae import vae as vae_mod
  from infinity.utils.dynamic_resolution import dynamic_resolution_h_w
  fp64_cross_attention(basic)

  real_autoencoder = vae_mod.AutoEncoder

  def small_autoencoder(a):
    a.base_ch = BASE_CH  # vae_model hard-codes 128
    return real_autoencoder(a)

  vae_mod.AutoEncoder = small_autoencoder
  torch.manual_seed(args.seed)
  vae = vae_mod.vae_model(None, test_mode=True, **VAE_KW)
  init_vae(vae, args.seed)
  vae.eval()

  torch.manual_seed(args.seed)
  model = infinity_mod.Infinity(vae_local=vae, **CONSTRUCTOR_KW, **MODEL_KW)
  perturb_transformer(model, args.seed)
  model.eval()
  model.cond_drop_rate = 0.0
  model.rng = torch.Generator()

  full = dynamic_resolution_h_w[RATIO]["0.06M"]["scales"]
  schedule = [(1, h, w) for _, h, w in full[:NUM_SCALES]]
  key = str(tuple(schedule))
  # The official table keys only the 4 budgets; every key of a ratio holds
  # the same 1M-grid cache, of which this schedule is a prefix.
  model.rope2d_freqs_grid[key] = model.rope2d_freqs_grid[
      str(tuple((1, h, w) for _, h, w in full))]
  vae_schedule = [(1, 2 * h, 2 * w) for _, h, w in schedule]
  n_tokens = sum(h * w for _, h, w in schedule)
  head_dim = MODEL_KW["embed_dim"] // MODEL_KW["num_heads"]
  arrays = {f"infinity/{k}": v.numpy() for k, v in model.state_dict().items()}
  vae_arrays = {f"vae/{k}": v.numpy() for k, v in vae.state_dict().items()}
  arrays["rope/grid_pos"] = rope_positions(model.rope2d_freqs_grid[key],
                                           head_dim, n_tokens)
  for ratio in sorted(dynamic_resolution_h_w):
    s1m = dynamic_resolution_h_w[ratio]["1M"]["scales"]
    t = model.rope2d_freqs_grid[str(tuple((1, h, w) for _, h, w in s1m))]
    arrays[f"rope_1m/{ratio:g}"] = rope_positions(
        t, head_dim, sum(h * w for _, h, w in s1m)).astype(np.uint8)

  g = torch.Generator().manual_seed(args.seed * 1000 + 23)
  ct5 = CONSTRUCTOR_KW["text_channels"]
  kv = torch.randn(sum(TEXT_LENS), ct5, generator=g) * 0.3
  cu = torch.tensor(np.cumsum((0,) + TEXT_LENS), dtype=torch.int32)
  arrays.update({"text/kv_compact": kv.numpy(),
                 "text/lens": np.asarray(TEXT_LENS, np.int32),
                 "text/cu_seqlens_k": cu.numpy(),
                 "text/max_seqlen_k": np.int32(max(TEXT_LENS))})

  # Greedy sampling: record the guided logits, choose the argmax bit.
  logits_seen = []

  def greedy(logits_BlV, top_k=0, top_p=0.0, rng=None, num_samples=1):
    logits_seen.append(logits_BlV.detach().clone())
    return logits_BlV.argmax(-1, keepdim=True)

  infinity_mod.sample_with_top_k_top_p_also_inplace_modifying_logits_ = greedy
  decoded = []
  real_decode = vae.decode

  def decode(z):
    decoded.append(z.contiguous().clone())
    return real_decode(z.contiguous())

  vae.decode = decode
  b = len(TEXT_LENS)
  with torch.no_grad():
    _, _, img_u8 = model.autoregressive_infer_cfg(
        vae=vae, scale_schedule=schedule,
        label_B_or_BLT=(kv, list(TEXT_LENS), cu, max(TEXT_LENS)), B=b,
        g_seed=args.seed, cfg_list=[CFG] * NUM_SCALES,
        tau_list=[TAU] * NUM_SCALES, top_k=1, top_p=0.0, returns_vemb=1,
        cfg_insertion_layer=[0], vae_type=VAE_KW["codebook_dim"],
        ret_img=True, inference_mode=True)
    d = 4 * VAE_KW["codebook_dim"]
    logits = torch.cat([lg.reshape(b, -1, 2 * d) for lg in logits_seen], 1)
    bits = logits.reshape(b, n_tokens, d, 2).argmax(-1)
    margin = (logits[..., 1::2] - logits[..., 0::2]).abs()
    summed = decoded[-1]
    img = real_decode(summed)
    arrays.update({
        "sample/bits": bits.numpy().astype(np.uint8),
        "diag/sample_logits_guided_fp32ca_forced": logits.numpy(),
        "sample/summed_codes": summed.numpy(),
        "sample/img": img.numpy()})

    # VAE test (c): a smooth synthetic image, 144x96, uint8 then [-1, 1].
    hh, ww = 8 * vae_schedule[-1][1], 8 * vae_schedule[-1][2]
    yy, xx = np.meshgrid(np.linspace(0, 1, hh), np.linspace(0, 1, ww),
                         indexing="ij")
    rgb = np.stack([np.sin(6 * xx + 2 * yy), np.cos(5 * yy - 3 * xx),
                    np.sin(9 * xx * yy + 1)], 0)
    u8 = np.round((rgb + 1) * 127.5).clip(0, 255).astype(np.uint8)
    x = torch.from_numpy(u8[None].astype(np.float32) / 127.5 - 1)
    h, z, _, all_bits, _, _ = vae.encode(x, scale_schedule=vae_schedule)
    flat = torch.cat([bb.reshape(1, -1, VAE_KW["codebook_dim"])
                      for bb in all_bits], 1)
    vae_arrays.update({
        "vaetest/img_in": x.numpy(), "vaetest/h": h.numpy(),
        "vaetest/bits": flat.numpy().astype(np.uint8),
        "vaetest/z": z.numpy(), "vaetest/img_rec": real_decode(z).numpy()})

  n_inf = sum(p.numel() for p in model.parameters())
  n_vae = sum(p.numel() for p in vae.parameters())
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  name = "infinity_8b_tiny"
  np.savez_compressed(out / f"{name}.npz", **arrays)
  np.savez_compressed(out / f"{name}_vae.npz", **vae_arrays)
  meta = dict(
      name=name, official_repo="FoundationVision/Infinity",
      official_repo_commit=COMMIT,
      generator=("official code, CPU, float32 eager (TORCHDYNAMO_DISABLE=1),"
                 " cross-attention in float64 (no bf16 cast), flash-attn "
                 "varlen replaced by an exact SDPA stand-in; "
                 "scripts/oracle/infinity_8b_tiny.py"),
      torch_version=torch.__version__, threads=1, seed=args.seed,
      runtime_s=round(time.time() - t0, 2),
      hyperparameters=dict(
          model_kwargs=MODEL_KW, constructor_kwargs=CONSTRUCTOR_KW,
          vae=dict(entry="infinity.models.bsq_vae.vae.vae_model",
                   base_ch=BASE_CH, num_res_blocks=2, **VAE_KW)),
      derived=dict(scale_schedule=schedule, vae_scale_schedule=vae_schedule,
                   h_div_w_template=RATIO, L=n_tokens, d_token=d,
                   head_dim=head_dim, n_params_infinity=n_inf,
                   n_params_vae=n_vae, image_hw=[hh, ww]),
      sampling=dict(cfg_list=[CFG] * NUM_SCALES, tau_list=[TAU] * NUM_SCALES,
                    top_k=1, top_p=0.0, cfg_insertion_layer=[0],
                    choice="argmax of each guided bit pair (greedy)"),
      text=dict(lens=list(TEXT_LENS),
                features="N(0, 0.3^2) float32, packed varlen"),
      weights_recipe=("as shared/reference README §1: transformer = official "
                      "constructor under manual_seed(seed), += N(0, s^2) "
                      "(s = 0.5/sqrt(fan_in) for 2-D non-embedding weights, "
                      "else 0.1); VAE drawn fresh (conv N(0, 1/fan_in), "
                      "GroupNorm 1+N(0, 0.01) / N(0, 0.01), other biases "
                      "N(0, 0.0025)); every tensor rounded to k*2^e, "
                      f"|k| <= {K_MAX}"),
      array_docs={
          "rope_1m/<ratio>": "(L_1M, 2) uint8 (row, col) RoPE positions of "
                             "every token of the ratio's 1M schedule, "
                             "recovered from the official table",
          "sample/bits": "(B, L, 56) uint8 token bits (patchified order: "
                         "channel 4c + 2i + j is latent bit c at (2h+i, "
                         "2w+j)), argmax of each guided pair",
          "diag/sample_logits_guided_fp32ca_forced":
              "(B, L, 112) guided logits head/tau, cfg*cond+(1-cfg)*uncond "
              "(cross-attention without the bf16 cast)",
          "sample/summed_codes": "(B, 14, 18, 12) as handed to "
                                 "vae.decode (contiguous)",
      },
      stats=dict(sample_bit_margin_min=float(margin.min()),
                 sample_bits_below_1em3=int((margin < 1e-3).sum()),
                 official_uint8_image_shape=list(img_u8.shape)),
      files={f"{name}.npz": sha256_of_arrays(arrays),
             f"{name}_vae.npz": sha256_of_arrays(vae_arrays)})
  (out / f"{name}.json").write_text(json.dumps(meta, indent=1))
  print(json.dumps(dict(n_params_infinity=n_inf, n_params_vae=n_vae,
                        L=n_tokens, margin_min=float(margin.min()),
                        sizes={p.name: p.stat().st_size
                               for p in out.glob(f"{name}*")},
                        runtime_s=meta["runtime_s"])))


if __name__ == "__main__":
  main()
