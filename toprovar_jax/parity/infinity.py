"""Infinity parity: the transformer and its BSQ VAE (`infinity_tiny`-style).

Every hyper-parameter comes from NAME.json (`infinity_configs`). Logits are
compared with the fp32-cross-attention `diag/*` arrays at 1e-4; the
official (bf16-cross-attention) logits only within README §6's bounds
(§5.1). Sampling forces the stored bits at every scale (§5.2) and compares
our argmax with the argmax of `diag/*` (§5.5). Teacher forcing runs when
the reference holds its arrays (reference.LAYOUTS["infinity"]).
"""

from __future__ import annotations

from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax.convert import transformer as convert_transformer
from toprovar_jax.models import config as config_lib
from toprovar_jax.models import transformer
from toprovar_jax.parity import compare
from toprovar_jax.parity import reference

field = reference.field
_FP32_GUIDED = "diag/sample_logits_guided_fp32ca_forced"


def infinity_configs(meta) -> Tuple[config_lib.TransformerConfig,
                                    config_lib.BSQConfig]:
  """(transformer, BSQ VAE) configs of an Infinity reference json.

  Raises:
    ReferenceError: a missing or unusable field (named), or hyper-parameters
      that describe no valid model.
  """
  mk = lambda k, cast: field(meta, f"hyperparameters.model_kwargs.{k}", cast)
  ck = lambda k, *cast_default: field(
      meta, f"hyperparameters.constructor_kwargs.{k}", *cast_default)
  vk = lambda k, *cast_default: field(meta, f"hyperparameters.vae.{k}",
                                      *cast_default)
  width = mk("embed_dim", reference.as_int)
  heads = mk("num_heads", reference.as_int)
  patchify = ck("apply_spatial_patchify", reference.as_bool, False)
  code_dim = vk("codebook_dim", reference.as_int)
  schedule = field(meta, "derived.scale_schedule", _schedule)
  mlp_ratio = field(meta, "hyperparameters.model_kwargs.mlp_ratio",
                    reference.as_float, 4.0)
  model = reference.construct(
      "Infinity model", config_lib.TransformerConfig,
      name=field(meta, "name", str, "infinity_ref"), style="infinity",
      depth=mk("depth", reference.as_int), width=width, num_heads=heads,
      mlp_hidden=config_lib.infinity_mlp_hidden(width, mlp_ratio),
      schedule=schedule, latent_dim=code_dim * (4 if patchify else 1),
      shared_aln=ck("shared_aln", reference.as_bool, True),
      num_level_embeds=15, text_dim=ck("text_channels", reference.as_int),
      text_maxlen=ck("text_maxlen", reference.as_int),
      rope_grid=config_lib.infinity_rope_grid(schedule), patchify=patchify)
  vae = reference.construct(
      "BSQ VAE", config_lib.BSQConfig,
      base_ch=vk("base_ch", reference.as_int),
      ch_mult=vk("encoder_ch_mult", reference.as_ints),
      num_res_blocks=vk("num_res_blocks", reference.as_int, 2),
      codebook_dim=code_dim)
  return model, vae


def _schedule(v) -> Tuple[Tuple[int, int], ...]:
  """[[t, h, w], ...] -> ((h, w), ...)."""
  if not isinstance(v, (list, tuple)) or not v or not all(
      isinstance(s, (list, tuple)) and len(s) == 3 for s in v):
    raise ValueError("not a non-empty list of [t, h, w]")
  return tuple(reference.as_ints(s)[1:] for s in v)


def _one_value(meta, path: str) -> float:
  """A per-scale sampling list that must hold one value (our sampler's)."""
  values = field(meta, path, lambda v: [reference.as_float(x) for x in v])
  if not values or len(set(values)) != 1:
    raise reference.ReferenceError(
        f"field {path} = {values} varies by scale (or is empty); "
        "check_parity compares one value for all scales", field=path)
  return values[0]


def padded_text(arrays, cfg) -> Tuple[jax.Array, jax.Array]:
  """Packed varlen text -> zero-padded features and mask.

  Args:
    arrays: `text/kv_compact` (ΣT_i, Ct), `text/lens` (B,) and
      `text/cu_seqlens_k` (B + 1,), as the official code packs them.
    cfg: the transformer config (Ct = cfg.text_dim).
  Returns:
    (B, T_max, Ct) float32 features and their (B, T_max) bool mask.
  """
  lens = np.asarray(arrays["text/lens"]).astype(int)
  cu = np.asarray(arrays["text/cu_seqlens_k"]).astype(int)
  kv = np.asarray(arrays["text/kv_compact"], np.float32)
  t = int(lens.max())
  text = np.zeros((len(lens), t, cfg.text_dim), np.float32)
  mask = np.zeros((len(lens), t), bool)
  for i, n in enumerate(lens):
    text[i, :n] = kv[cu[i]:cu[i] + n]
    mask[i, :n] = True
  return jnp.asarray(text), jnp.asarray(mask)


def _text(ref, cfg):
  """`padded_text` of the reference once its text arrays are checked, and
  the bound batch letter."""
  dims = reference.check_inputs(ref, {
      "text/lens": (("B",), "int", (1, cfg.text_maxlen + 1))})
  lens = np.asarray(ref.arrays["text/lens"]).astype(int)
  reference.check_inputs(ref, {
      "text/cu_seqlens_k": ((dims["B"] + 1,), "int", None),
      "text/kv_compact": ((int(lens.sum()), cfg.text_dim), "float", None)})
  cu = np.asarray(ref.arrays["text/cu_seqlens_k"]).astype(int)
  if cu[0] != 0 or not np.array_equal(np.diff(cu), lens):
    raise reference.ReferenceError(
        f"{ref.file_of('text/cu_seqlens_k')}: text/cu_seqlens_k {cu.tolist()}"
        f" are not the running sums of text/lens {lens.tolist()}",
        file=ref.file_of("text/cu_seqlens_k"),
        arrays=["text/cu_seqlens_k", "text/lens"])
  return (*padded_text(ref.arrays, cfg), dims)


def check(ref: reference.Reference) -> Dict[str, compare.Check]:
  """Every Infinity check (reference.LAYOUTS["infinity"]) of one reference."""
  from toprovar_jax.convert import bsq_vae as convert_bsq
  from toprovar_jax.models import bsq_vae, layers
  from toprovar_jax.sampling import latents
  from toprovar_jax.sampling import runner
  from toprovar_jax.sampling import sampler as sampler_lib

  arrays, meta = ref.arrays, ref.meta
  cfg, vcfg = infinity_configs(meta)
  reference.check_depth(ref, "infinity/", cfg.depth,
                        "hyperparameters.model_kwargs.depth")
  params, vae_params = reference.model_weights(
      ref, "infinity/",
      lambda sd: convert_transformer.convert_transformer(sd, cfg),
      lambda sd: convert_bsq.convert_bsq_vae(sd, vcfg), "BSQ VAE")
  vparams = {"params": vae_params}
  n_inf = field(meta, "derived.n_params_infinity", reference.as_int)
  n_vae = field(meta, "derived.n_params_vae", reference.as_int)
  cfg_scale = _one_value(meta, "sampling.cfg_list")
  tau = _one_value(meta, "sampling.tau_list")
  text, mask, dims = _text(ref, cfg)
  length, d = cfg.seq_len, cfg.latent_dim
  vh, vw = config_lib.vae_grid(cfg)
  tf = "teacher_forcing" in ref.groups
  reference.check_inputs(ref, {
      "sample/bits": (("B", length, d), "bits", None),
      "vaetest/img_in": (("N", 3, vh * vcfg.stride, vw * vcfg.stride),
                         "float", None),
      **({"tf/gt_bits": (("B", length, d), "bits", None),
          "tf/x_BLC_wo_prefix": (("B", length - cfg.tokens_per_scale[0], d),
                                 "float", None)} if tf else {})}, dims)

  checks: Dict[str, compare.Check] = {
      "param_count": compare.param_check(compare.count(params), n_inf),
      "vae_param_count": compare.param_check(compare.count(vparams), n_vae),
      "rope_positions": compare.exact(layers.rope_positions(cfg),
                                      arrays["rope/grid_pos"])}

  sched_vae = tuple(config_lib.vae_grid(cfg, s) for s in range(cfg.num_scales))
  off = cfg.scale_offsets

  def summed_from_bits(bits):
    acc = latents.InfinityLatents(cfg)
    s = acc.init(bits.shape[0])
    ins = []
    for si in range(cfg.num_scales):
      s = acc.add(None, s, bits[:, off[si]:off[si + 1]], si)
      if si + 1 < cfg.num_scales:
        ins.append(acc.next_input(None, s, si + 1))
    return s, jnp.concatenate(ins, 1)

  if tf:
    with reference.running(ref, "teacher forcing", "tf/x_BLC_wo_prefix",
                           "tf/gt_bits", "text/*"):
      lg = jax.jit(lambda p, x, t, m: transformer.teacher_forced_logits(
          p, cfg, inputs=x, text=t, text_mask=m))(
              params, arrays["tf/x_BLC_wo_prefix"], text, mask)
      s, ins = jax.jit(summed_from_bits)(jnp.asarray(arrays["tf/gt_bits"]))
    checks["tf_logits"] = compare.close(
        lg, arrays["diag/tf_logits_fp32ca"], compare.LOGITS_TOL,
        against="diag/tf_logits_fp32ca")
    checks["tf_logits_official_bf16ca"] = compare.close(
        lg, arrays["tf/logits"], compare.OFFICIAL_TF_LOGITS_TOL)
    checks["tf_summed_codes"] = compare.close(
        compare.nchw(s), arrays["tf/summed_codes"], compare.LATENT_TOL)
    checks["tf_inputs"] = compare.close(ins, arrays["tf/x_BLC_wo_prefix"],
                                        compare.LATENT_TOL)

  model = bsq_vae.BSQVAE(vcfg)
  decode = jax.jit(lambda vp, z: model.apply(vp, z,
                                             method=bsq_vae.BSQVAE.decode))
  img_in = compare.nhwc(arrays["vaetest/img_in"])
  with reference.running(ref, "BSQ VAE encode / decode", "vaetest/img_in"):
    h = jax.jit(lambda vp, x: model.apply(
        vp, x, method=bsq_vae.BSQVAE.encode_h))(vparams, img_in)
    bits, z = jax.jit(lambda vp, x: model.apply(
        vp, x, sched_vae, method=bsq_vae.BSQVAE.encode))(vparams, img_in)
    img_rec = decode(vparams, z)
  checks["vae_h"] = compare.close(compare.nchw(h), arrays["vaetest/h"],
                                  compare.LATENT_TOL)
  flat = np.concatenate([np.asarray(b).reshape(b.shape[0], -1, b.shape[-1])
                         for b in bits], 1)
  checks["vae_bits"] = compare.exact(flat.astype(np.uint8),
                                     arrays["vaetest/bits"])
  checks["vae_z"] = compare.close(compare.nchw(z), arrays["vaetest/z"],
                                  compare.LATENT_TOL)
  checks["vae_img_rec"] = compare.close(
      compare.nchw(img_rec), arrays["vaetest/img_rec"], compare.IMAGE_TOL)

  smp = sampler_lib.Sampler(model=cfg, tokenizer=vcfg,
                            sampling=sampler_lib.SamplingConfig(
                                top_k=1, return_logits=True))
  with reference.running(ref, "forced sampling", "sample/bits", "text/*"):
    out = smp.generate(params, None, runner.image_keys(0, range(len(text))),
                       jnp.float32(cfg_scale), jnp.float32(tau), text=text,
                       text_mask=mask,
                       forced=jnp.asarray(arrays["sample/bits"]))
    img = decode(vparams, out.latent)
  checks["sample_logits_guided"] = compare.close(
      out.logits, arrays[_FP32_GUIDED], compare.LOGITS_TOL,
      against=_FP32_GUIDED)
  checks["sample_argmax"] = {**compare.argmax_check(
      out.logits, arrays[_FP32_GUIDED], pairs=True), "against": _FP32_GUIDED}
  if "official_guided_logits" in ref.groups:
    checks["sample_logits_guided_official_bf16ca"] = compare.close(
        out.logits, arrays["sample/logits_guided"],
        compare.OFFICIAL_GUIDED_LOGITS_TOL)
  checks["sample_summed_codes"] = compare.close(
      compare.nchw(out.latent), arrays["sample/summed_codes"],
      compare.LATENT_TOL)
  checks["sample_img"] = compare.close(compare.nchw(img), arrays["sample/img"],
                                       compare.IMAGE_TOL)
  return checks
