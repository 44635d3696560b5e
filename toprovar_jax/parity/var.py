"""VAR parity: the transformer and its VQVAE against `var_tiny`-style files.

Every hyper-parameter comes from NAME.json (`var_configs`), never from our
configs, so other depths, seeds and labels work unchanged. Checks (README
§4-§6): parameter counts and φ indices; (a) teacher-forced logits, f̂ and
inputs from `tf/gt_idx`; (c) VQVAE encode / quantise / decode; (b)
sampling with the stored indices forced at every scale: guided logits,
argmax away from near-ties, f̂ and the image.
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


def var_configs(meta) -> Tuple[config_lib.TransformerConfig,
                               config_lib.VQVAEConfig]:
  """(transformer, VQVAE) configs of a VAR reference json.

  Raises:
    ReferenceError: naming the json field that is missing or unusable, or
      saying why the hyper-parameters describe no valid model.
  """
  hp = lambda k, cast: field(meta, f"hyperparameters.{k}", cast)
  dv = lambda k, cast, default: field(meta, f"derived.{k}", cast, default)
  depth = hp("depth", reference.as_int)
  patch_nums = hp("patch_nums", reference.as_ints)
  width = dv("width_C", reference.as_int, 64 * depth)
  model = reference.construct(
      "VAR model", config_lib.TransformerConfig,
      name=field(meta, "name", str, f"var_d{depth}"), style="var",
      depth=depth, width=width,
      num_heads=dv("num_heads", reference.as_int, depth),
      mlp_hidden=dv("mlp_hidden", reference.as_int, 4 * width),
      schedule=config_lib.square_schedule(patch_nums),
      latent_dim=hp("Cvae", reference.as_int),
      vocab_size=hp("V", reference.as_int),
      num_classes=hp("num_classes", reference.as_int),
      shared_aln=hp("shared_aln", reference.as_bool),
      num_level_embeds=len(patch_nums),
      norm_eps=dv("norm_eps", reference.as_float, 1e-6))
  vae = reference.construct(
      "VAR VQVAE", config_lib.VQVAEConfig,
      ch=hp("ch", reference.as_int),
      ch_mult=dv("vae_ch_mult", reference.as_ints, (1, 1, 2, 2, 4)),
      num_res_blocks=dv("vae_num_res_blocks", reference.as_int, 2),
      z_channels=hp("Cvae", reference.as_int),
      vocab_size=hp("V", reference.as_int),
      share_quant_resi=hp("share_quant_resi", reference.as_int),
      quant_resi=dv("vae_quant_resi", reference.as_float, 0.5),
      patch_nums=patch_nums)
  return model, vae


def _inputs(ref, cfg, vcfg):
  """Refuses the arrays the models read unless they fit the configs."""
  length, first = cfg.seq_len, cfg.tokens_per_scale[0]
  side = vcfg.patch_nums[-1] * 2 ** (len(vcfg.ch_mult) - 1)
  classes = (0, cfg.num_classes + 1)  # the last row is the null class
  codes = (0, cfg.vocab_size)
  reference.check_inputs(ref, {
      "tf/labels": (("B",), "int", classes),
      "tf/gt_idx": (("B", length), "int", codes),
      "tf/x_BLCv_wo_first_l": (("B", length - first, cfg.latent_dim),
                               "float", None)})
  reference.check_inputs(ref, {
      "vaetest/img_in": (("N", 3, side, side), "float", None),
      "vaetest/idx": (("N", length), "int", codes)})
  reference.check_inputs(ref, {
      "sample/labels": (("B",), "int", classes),
      "sample/idx": (("B", length), "int", codes)})


def check(ref: reference.Reference) -> Dict[str, compare.Check]:
  """Every VAR check (reference.LAYOUTS["var"]) of one reference."""
  from toprovar_jax.convert import vqvae as convert_vqvae
  from toprovar_jax.models import vqvae
  from toprovar_jax.sampling import runner
  from toprovar_jax.sampling import sampler as sampler_lib

  arrays, meta = ref.arrays, ref.meta
  cfg, vcfg = var_configs(meta)
  reference.check_depth(ref, "var/", cfg.depth, "hyperparameters.depth")
  params, vparams = reference.model_weights(
      ref, "var/", lambda sd: convert_transformer.convert_transformer(sd, cfg),
      lambda sd: convert_vqvae.convert_vqvae(sd, vcfg), "VQVAE")
  n_var = field(meta, "derived.n_params_var", reference.as_int)
  n_vae = field(meta, "derived.n_params_vae", reference.as_int)
  phi = field(meta, "derived.phi_index_per_scale", reference.as_ints)
  cfg_scale = field(meta, "sampling.cfg", reference.as_float)
  _inputs(ref, cfg, vcfg)

  checks: Dict[str, compare.Check] = {
      "param_count": compare.param_check(compare.count(params), n_var),
      "vae_param_count": compare.param_check(compare.count(vparams), n_vae),
      "phi_index": {"ours": list(vcfg.phi_index), "reference": list(phi),
                    "pass": tuple(vcfg.phi_index) == phi}}

  with reference.running(ref, "teacher forcing", "tf/x_BLCv_wo_first_l",
                         "tf/labels"):
    lg = jax.jit(lambda p, x, y: transformer.teacher_forced_logits(
        p, cfg, inputs=x, labels=y))(params, arrays["tf/x_BLCv_wo_first_l"],
                                     arrays["tf/labels"])
  checks["tf_logits"] = compare.close(lg, arrays["tf/logits"],
                                      compare.LOGITS_TOL)

  model = vqvae.VQVAE(vcfg)
  # Greedy, returning the guided logits: run with the stored choices forced.
  smp = sampler_lib.Sampler(model=cfg, tokenizer=vcfg,
                            sampling=sampler_lib.SamplingConfig(
                                top_k=1, return_logits=True))
  off = cfg.scale_offsets
  split = lambda idx: [jnp.asarray(idx[:, off[s]:off[s + 1]]).reshape(
      idx.shape[0], h, w) for s, (h, w) in enumerate(cfg.schedule)]

  @jax.jit
  def tf_fhat(vp, idx_list):
    f = jnp.zeros((idx_list[0].shape[0], *cfg.schedule[-1], vcfg.z_channels))
    outs, inputs = [], []
    for s, idx in enumerate(idx_list):
      f = model.apply(vp, f, idx, s, method=vqvae.VQVAE.add_scale)
      outs.append(f)
      if s + 1 < cfg.num_scales:
        inputs.append(model.apply(vp, f, s, method=vqvae.VQVAE.next_input))
    return outs, inputs

  with reference.running(ref, "f̂ from indices", "tf/gt_idx"):
    outs, inputs = tf_fhat(vparams, split(arrays["tf/gt_idx"]))
  checks["tf_f_hat"] = compare.close(
      np.stack([compare.nchw(f) for f in outs]), arrays["tf/f_hat"],
      compare.LATENT_TOL)
  x = np.concatenate([np.asarray(i).reshape(i.shape[0], -1, i.shape[-1])
                      for i in inputs], 1)
  checks["tf_inputs"] = compare.close(x, arrays["tf/x_BLCv_wo_first_l"],
                                      compare.LATENT_TOL)

  img_in = compare.nhwc(arrays["vaetest/img_in"])
  with reference.running(ref, "VQVAE encode / decode", "vaetest/img_in",
                         "vaetest/idx"):
    f = jax.jit(lambda vp, img: model.apply(
        vp, img, method=vqvae.VQVAE.encode))(vparams, img_in)
    idx_list, fhats = jax.jit(lambda vp, f: model.apply(
        vp, f, return_f_hat=True, method=vqvae.VQVAE.f_to_indices))(
            vparams, f)
    img = jax.jit(lambda vp, idx: model.apply(
        vp, idx, method=vqvae.VQVAE.indices_to_img))(
            vparams, split(arrays["vaetest/idx"]))
  checks["vae_f"] = compare.close(compare.nchw(f), arrays["vaetest/f"],
                                  compare.LATENT_TOL)
  idx = np.concatenate([np.asarray(i).reshape(i.shape[0], -1)
                        for i in idx_list], 1)
  checks["vae_idx"] = compare.exact(idx, arrays["vaetest/idx"])
  checks["vae_f_hat"] = compare.close(
      np.stack([compare.nchw(f) for f in fhats]), arrays["vaetest/f_hat"],
      compare.LATENT_TOL)
  checks["vae_img_rec"] = compare.close(
      compare.nchw(img), arrays["vaetest/img_rec"], compare.IMAGE_TOL)

  labels = jnp.asarray(arrays["sample/labels"])
  with reference.running(ref, "forced sampling", "sample/labels",
                         "sample/idx"):
    out = smp.generate(params, vparams,
                       runner.image_keys(0, range(labels.shape[0])),
                       jnp.float32(cfg_scale), jnp.float32(1.0),
                       labels=labels,
                       forced=jnp.asarray(arrays["sample/idx"]))
    img = jax.jit(lambda vp, f: model.apply(vp, f, method=vqvae.VQVAE.decode))(
        vparams, out.latent)
  checks["sample_logits_guided"] = compare.close(
      out.logits, arrays["sample/logits_guided"], compare.LOGITS_TOL)
  checks["sample_argmax"] = compare.argmax_check(
      out.logits, arrays["sample/logits_guided"], pairs=False)
  checks["sample_f_hat"] = compare.close(
      compare.nchw(out.latent), arrays["sample/f_hat"], compare.LATENT_TOL)
  # The VAR sampler returns (x + 1) / 2 in [0, 1].
  checks["sample_img"] = compare.close((compare.nchw(img) + 1) / 2,
                                       arrays["sample/img"], compare.IMAGE_TOL)
  return checks
