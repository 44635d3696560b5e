"""Official VAR VQVAE state_dict -> `models.vqvae.VQVAE` variables (numpy).

The official key layout (ARCHITECTURES A.6) maps onto the linen tree as:
  encoder.down.{i}.block.{j}.norm1.weight -> .../down_{i}/block_{j}/norm1/scale
  encoder.down.{i}.attn.{j}.qkv.weight    -> .../down_{i}/attn_{j}/qkv/kernel
  encoder.down.{i}.downsample.conv.*      -> .../down_{i}/downsample/conv/*
  decoder.up.{i}.upsample.conv.*          -> .../up_{i}/upsample/conv/*
  {encoder,decoder}.mid.{block_1,attn_1,block_2}.* -> .../mid/...
  quantize.embedding.weight               -> quantize/embedding
  quantize.quant_resi.qresi_ls.{j}.*      -> quantize/phi_{j}/*
  quant_conv.*, post_quant_conv.*         -> quant_conv/*, post_quant_conv/*
(`...` is `encoder` or `decoder`; the params live under "params".)
Convs (O, I, kh, kw) become (kh, kw, I, O); GroupNorm weight becomes scale.
The only tensor skipped is the training statistic `quantize.ema_vocab_hit_SV`.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

import numpy as np

from toprovar_jax.convert.common import StateDict, conv2d
from toprovar_jax.weights.strict import check_against
from toprovar_jax.models.config import VQVAEConfig

# Buffers present in official files that carry no parameters.
IGNORED_BUFFERS = ("quantize.ema_vocab_hit_SV",)

Tree = Dict[str, Any]


class _Builder:
  """Takes official keys with their expected torch shapes into a linen tree."""

  def __init__(self, sd: StateDict):
    self.sd = sd

  def conv(self, key: str, cin: int, cout: int, k: int) -> Tree:
    return {"kernel": conv2d(self.sd.take(f"{key}.weight", (cout, cin, k, k))),
            "bias": self.sd.take(f"{key}.bias", (cout,))}

  def norm(self, key: str, c: int) -> Tree:
    return {"scale": self.sd.take(f"{key}.weight", (c,)),
            "bias": self.sd.take(f"{key}.bias", (c,))}

  def resblock(self, key: str, cin: int, cout: int) -> Tree:
    out = {"norm1": self.norm(f"{key}.norm1", cin),
           "conv1": self.conv(f"{key}.conv1", cin, cout, 3),
           "norm2": self.norm(f"{key}.norm2", cout),
           "conv2": self.conv(f"{key}.conv2", cout, cout, 3)}
    if cin != cout:
      out["nin_shortcut"] = self.conv(f"{key}.nin_shortcut", cin, cout, 1)
    return out

  def attn(self, key: str, c: int) -> Tree:
    # qkv stays fused: its output channels are [q | k | v], as the model
    # splits them.
    return {"norm": self.norm(f"{key}.norm", c),
            "qkv": self.conv(f"{key}.qkv", c, 3 * c, 1),
            "proj_out": self.conv(f"{key}.proj_out", c, c, 1)}

  def mid(self, key: str, c: int) -> Tree:
    return {"block_1": self.resblock(f"{key}.block_1", c, c),
            "attn_1": self.attn(f"{key}.attn_1", c),
            "block_2": self.resblock(f"{key}.block_2", c, c)}


def _encoder(b: _Builder, cfg: VQVAEConfig) -> Tree:
  n = len(cfg.ch_mult)
  tree = {"conv_in": b.conv("encoder.conv_in", cfg.in_channels, cfg.ch, 3)}
  cin = cfg.ch
  for i, mult in enumerate(cfg.ch_mult):
    cout = cfg.ch * mult
    level = {}
    for j in range(cfg.num_res_blocks):
      level[f"block_{j}"] = b.resblock(f"encoder.down.{i}.block.{j}", cin, cout)
      cin = cout
      if i == n - 1:
        level[f"attn_{j}"] = b.attn(f"encoder.down.{i}.attn.{j}", cout)
    if i != n - 1:
      level["downsample"] = {
          "conv": b.conv(f"encoder.down.{i}.downsample.conv", cout, cout, 3)}
    tree[f"down_{i}"] = level
  tree["mid"] = b.mid("encoder.mid", cin)
  tree["norm_out"] = b.norm("encoder.norm_out", cin)
  tree["conv_out"] = b.conv("encoder.conv_out", cin, cfg.z_channels, 3)
  return tree


def _decoder(b: _Builder, cfg: VQVAEConfig) -> Tree:
  n = len(cfg.ch_mult)
  cin = cfg.ch * cfg.ch_mult[-1]
  tree = {"conv_in": b.conv("decoder.conv_in", cfg.z_channels, cin, 3),
          "mid": b.mid("decoder.mid", cin)}
  for i in reversed(range(n)):
    cout = cfg.ch * cfg.ch_mult[i]
    level = {}
    for j in range(cfg.num_res_blocks + 1):
      level[f"block_{j}"] = b.resblock(f"decoder.up.{i}.block.{j}", cin, cout)
      cin = cout
      if i == n - 1:
        level[f"attn_{j}"] = b.attn(f"decoder.up.{i}.attn.{j}", cout)
    if i != 0:
      level["upsample"] = {
          "conv": b.conv(f"decoder.up.{i}.upsample.conv", cout, cout, 3)}
    tree[f"up_{i}"] = level
  tree["norm_out"] = b.norm("decoder.norm_out", cin)
  tree["conv_out"] = b.conv("decoder.conv_out", cin, cfg.in_channels, 3)
  return tree


def _quantize(b: _Builder, cfg: VQVAEConfig) -> Tree:
  # Imported here so that the numpy conversion itself never needs jax.
  from toprovar_jax.models.vqvae import num_phi
  z = cfg.z_channels
  tree = {"embedding": b.sd.take("quantize.embedding.weight",
                                 (cfg.vocab_size, z))}
  n = num_phi(cfg)
  for j in range(n):
    # PhiShared keeps its single conv as `qresi`; PhiPartiallyShared as a
    # ModuleList `qresi_ls`.
    key = ("quantize.quant_resi.qresi" if cfg.share_quant_resi == 1
           else f"quantize.quant_resi.qresi_ls.{j}")
    tree[f"phi_{j}"] = b.conv(key, z, z, 3)
  return tree


def convert_vqvae(state_dict: Mapping[str, Any], config: VQVAEConfig, *,
                  verify: bool = True) -> Dict[str, Tree]:
  """Converts an official VQVAE state_dict (prefix already stripped).

  Args:
    state_dict: {official key: array}; torch tensors must already be numpy.
    config: the VQVAEConfig the weights were trained with.
    verify: also compare the tree with `jax.eval_shape` of the module's init
      (costs a trace, no allocation).

  Returns:
    `{"params": tree}` of float32 numpy arrays, ready for `VQVAE.apply`.

  Raises:
    ConversionError: listing every missing, unexpected and mis-shaped key.
  """
  sd = StateDict(state_dict, ignore=IGNORED_BUFFERS, context="VAR VQVAE")
  b = _Builder(sd)
  tree = {"encoder": _encoder(b, config),
          "decoder": _decoder(b, config),
          "quant_conv": b.conv("quant_conv", config.z_channels,
                               config.z_channels, 3),
          "post_quant_conv": b.conv("post_quant_conv", config.z_channels,
                                    config.z_channels, 3),
          "quantize": _quantize(b, config)}
  sd.finish()
  variables = {"params": tree}
  if verify:
    check_against(variables, abstract_variables(config),
                  context="VAR VQVAE converter vs module")
  return variables


def abstract_variables(config: VQVAEConfig, image_size: int = 0):
  """`jax.eval_shape` of `VQVAE(config).init`: shapes only, no allocation."""
  import jax
  import jax.numpy as jnp
  from toprovar_jax.models.vqvae import VQVAE
  down = 2 ** (len(config.ch_mult) - 1)
  size = image_size or config.patch_nums[-1] * down
  img = jax.ShapeDtypeStruct((1, size, size, config.in_channels), jnp.float32)
  return jax.eval_shape(VQVAE(config).init, jax.random.key(0), img)


def count_params(variables) -> int:
  """Number of parameter scalars in a (possibly abstract) variables tree."""
  import jax
  return int(sum(np.prod(x.shape) for x in
                 jax.tree_util.tree_leaves(variables["params"])))
