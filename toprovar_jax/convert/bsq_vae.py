"""Official Infinity BSQ VAE state_dict -> `models.bsq_vae.BSQVAE` params.

Pure numpy key mapping followed by a strict structural check (STYLE.md
§9.24). The official loader (`vae.load_cnn`) is non-strict and accepts two
spellings of every conv and norm key; so do we, but every tensor must be
consumed:

  official (module names)                 also accepted (no wrapper level)
  `encoder.conv_in.conv.weight`           `encoder.conv_in.weight`
  `….block.0.norm1.norm.weight`           `….block.0.norm1.weight`
  `….downsample.conv.conv.weight`         `….downsample.conv.weight`

The only keys allowed to go unused are the duplicated BSQ buffer
`quantizer.lfq.mask` / `quantize.lfq.mask` (2^(d-1..0)); when present its
shape is still checked against `codebook_dim`. The input is the `"vae"` (or
`"ema"`) sub-dict of the official checkpoint, keys without any file prefix.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

import jax
import jax.numpy as jnp

from toprovar_jax.convert import common
from toprovar_jax.models import bsq_vae
from toprovar_jax.models import config as config_lib
from toprovar_jax.weights import strict

_MASK_KEYS = ('quantizer.lfq.mask', 'quantize.lfq.mask')

Params = Dict[str, Any]


def _take_wrapped(sd: common.StateDict, base: str, wrapper: str, leaf: str,
                  shape: tuple):
  """Takes `base.wrapper.leaf`, falling back to `base.leaf`.

  When neither spelling exists the wrapped (official module) name is the one
  reported missing.
  """
  wrapped, bare = f'{base}.{wrapper}.{leaf}', f'{base}.{leaf}'
  if not sd.has(wrapped) and sd.has(bare):
    return sd.take(bare, shape)
  return sd.take(wrapped, shape)


def _conv(sd: common.StateDict, base: str, c_in: int, c_out: int,
          k: int) -> Params:
  w = _take_wrapped(sd, base, 'conv', 'weight', (c_out, c_in, k, k))
  b = _take_wrapped(sd, base, 'conv', 'bias', (c_out,))
  return {'kernel': common.conv2d(w), 'bias': b}


def _norm(sd: common.StateDict, base: str, c: int) -> Params:
  return {'scale': _take_wrapped(sd, base, 'norm', 'weight', (c,)),
          'bias': _take_wrapped(sd, base, 'norm', 'bias', (c,))}


def _resblock(sd: common.StateDict, base: str, c_in: int,
              c_out: int) -> Params:
  p = {
      'norm1': _norm(sd, f'{base}.norm1', c_in),
      'conv1': _conv(sd, f'{base}.conv1', c_in, c_out, 3),
      'norm2': _norm(sd, f'{base}.norm2', c_out),
      'conv2': _conv(sd, f'{base}.conv2', c_out, c_out, 3),
  }
  if c_in != c_out:
    p['nin_shortcut'] = _conv(sd, f'{base}.nin_shortcut', c_in, c_out, 1)
  return p


def _encoder(sd: common.StateDict, cfg: config_lib.BSQConfig,
             n_down: int) -> Params:
  ch = cfg.base_ch
  p = {'conv_in': _conv(sd, 'encoder.conv_in', cfg.in_channels, ch, 3)}
  c = ch
  for lvl, mult in enumerate(cfg.ch_mult):
    level = {}
    for b in range(cfg.num_res_blocks):
      level[f'block_{b}'] = _resblock(
          sd, f'encoder.down.{lvl}.block.{b}', c, ch * mult)
      c = ch * mult
    if lvl < n_down:
      level['downsample'] = {
          'conv': _conv(sd, f'encoder.down.{lvl}.downsample.conv', c, c, 3)}
    p[f'down_{lvl}'] = level
  p['mid_block_1'] = _resblock(sd, 'encoder.mid.block_1', c, c)
  p['mid_block_2'] = _resblock(sd, 'encoder.mid.block_2', c, c)
  p['norm_out'] = _norm(sd, 'encoder.norm_out', c)
  p['conv_out'] = _conv(sd, 'encoder.conv_out', c, cfg.codebook_dim, 3)
  return p


def _decoder(sd: common.StateDict, cfg: config_lib.BSQConfig,
             n_up: int) -> Params:
  ch = cfg.base_ch
  c = ch * cfg.ch_mult[-1]
  p = {'conv_in': _conv(sd, 'decoder.conv_in', cfg.codebook_dim, c, 3),
       'mid_block_1': _resblock(sd, 'decoder.mid.block_1', c, c),
       'mid_block_2': _resblock(sd, 'decoder.mid.block_2', c, c)}
  # Channel widths depend on the processing order (coarse to fine), so walk
  # the levels in that order even though the keys keep the level index.
  for lvl in reversed(range(len(cfg.ch_mult))):
    level = {}
    for b in range(cfg.num_res_blocks + 1):
      level[f'block_{b}'] = _resblock(
          sd, f'decoder.up.{lvl}.block.{b}', c, ch * cfg.ch_mult[lvl])
      c = ch * cfg.ch_mult[lvl]
    if 1 <= lvl <= n_up:
      level['upsample'] = {
          'conv': _conv(sd, f'decoder.up.{lvl}.upsample.conv', c, c, 3)}
    p[f'up_{lvl}'] = level
  p['norm_out'] = _norm(sd, 'decoder.norm_out', c)
  p['conv_out'] = _conv(sd, 'decoder.conv_out', c, 3, 3)
  return p


def abstract_params(cfg: config_lib.BSQConfig) -> Params:
  """ShapeDtypeStruct tree of `BSQVAE(cfg)` params (no allocation)."""
  model = bsq_vae.BSQVAE(cfg)
  img = jax.ShapeDtypeStruct((1, cfg.stride, cfg.stride, cfg.in_channels),
                             jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), img)['params']


def convert_bsq_vae(state_dict: Mapping[str, Any],
                    cfg: config_lib.BSQConfig) -> Params:
  """Maps an official BSQ VAE state_dict onto the linen param tree.

  Args:
    state_dict: flat {official key: array} (numpy or CPU torch tensors), the
      `"vae"` sub-dict of the official checkpoint.
    cfg: the matching tokenizer config.

  Returns:
    The `params` collection of `BSQVAE(cfg)` (nested dict of float32 numpy
    arrays); use it as `model.apply({'params': params}, ...)`.

  Raises:
    ConversionError: listing every missing, unexpected and mis-shaped key,
      or a mismatch between the produced tree and the model's.
  """
  n_res = bsq_vae._num_resamples(cfg)  # pylint: disable=protected-access
  sd = common.StateDict(state_dict, context='BSQ VAE')
  for key in _MASK_KEYS:
    # Parameter-free buffer; its length still has to agree with d.
    if sd.has(key):
      sd.take(key, (cfg.codebook_dim,), dtype=None)
  params = {'encoder': _encoder(sd, cfg, n_res),
            'decoder': _decoder(sd, cfg, n_res)}
  sd.finish()
  strict.check_against(params, abstract_params(cfg), context='BSQ VAE tree')
  return params
