"""Official VAR / Infinity transformer state_dicts -> our params (pure numpy).

Key lists: ARCHITECTURES A.6 (VAR) and B.9 (Infinity). Strict: every tensor is
consumed except known buffers; missing, unexpected and mis-shaped keys are all
listed in one `ConversionError`. The result is checked leaf by leaf against the
model's abstract parameter tree.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping

import jax
import numpy as np

from toprovar_jax.convert import common
from toprovar_jax.models import config as config_lib
from toprovar_jax.models import transformer
from toprovar_jax.weights import strict

# Buffers that hold no parameters (recomputed by us).
_BUFFERS = ("zero_k_bias", "lvl_1L", "attn_bias_for_masking")


def _block_prefix(cfg: config_lib.TransformerConfig, sd: common.StateDict,
                  layer: int, chunks: int) -> str:
  if cfg.style == "var":
    return f"blocks.{layer}."
  if chunks <= 1:
    return f"blocks.{layer}."
  per = cfg.depth // chunks
  return f"block_chunks.{layer // per}.module.{layer % per}."


def _num_chunks(keys) -> int:
  ids = {int(m.group(1)) for k in keys
         if (m := re.match(r"block_chunks\.(\d+)\.module\.", k))}
  return len(ids)


def _dense(sd, key, din, dout, bias=True):
  out = {"kernel": common.linear(sd.take(f"{key}.weight", (dout, din)))}
  if bias:
    out["bias"] = sd.take(f"{key}.bias", (dout,))
  return out


def convert_transformer(state_dict: Mapping[str, Any],
                        cfg: config_lib.TransformerConfig) -> Dict[str, Any]:
  """Converts an official state_dict (keys without any file prefix).

  Args:
    state_dict: {official key: array}.
    cfg: the model config it must match.
  Returns:
    params {"stem": ..., "blocks": stacked} as numpy float32 arrays.
  Raises:
    strict.ConversionError listing every missing / unexpected / mis-shaped key.
  """
  sd = common.StateDict(state_dict, ignore=_BUFFERS, context=cfg.name)
  c, h, f = cfg.width, cfg.num_heads, cfg.mlp_hidden
  stem: Dict[str, Any] = {
      "word_embed": _dense(sd, "word_embed", cfg.latent_dim, c),
      "lvl_embed": {"embedding": sd.take("lvl_embed.weight",
                                         (cfg.num_level_embeds, c))},
      "pos_start": _reshape(sd.take("pos_start", (1, 1, c)), (c,)),
      "head_nm": _dense(sd, "head_nm.ada_lin.1", c, 2 * c),
      "head": _dense(sd, "head", c, cfg.head_out),
  }
  if cfg.shared_aln:
    stem["shared_ada_lin"] = _dense(sd, "shared_ada_lin.1", c, 6 * c)
  if cfg.style == "var":
    stem["class_emb"] = {"embedding": sd.take("class_emb.weight",
                                              (cfg.num_classes + 1, c))}
    stem["pos_1LC"] = _reshape(sd.take("pos_1LC", (1, cfg.seq_len, c)),
                               (cfg.seq_len, c))
  else:
    ct, hp = cfg.text_dim, cfg.pool_num_heads
    stem.update({
        "cfg_uncond": sd.take("cfg_uncond", (cfg.text_maxlen, ct)),
        "text_norm": sd.take("text_norm.weight", (ct,)),
        "pool_q": _reshape(sd.take("text_proj_for_sos.ca.mat_q",
                                   (1, hp, c // hp)), (hp, c // hp)),
        "pool_kv": _dense(sd, "text_proj_for_sos.ca.mat_kv", ct, 2 * c,
                          bias=False),
        "pool_v_bias": sd.take("text_proj_for_sos.ca.v_bias", (c,)),
        "pool_proj": _dense(sd, "text_proj_for_sos.ca.proj", c, c),
        "text_proj_0": _dense(sd, "text_proj_for_ca.0", ct, c),
        "text_proj_2": _dense(sd, "text_proj_for_ca.2", c, c),
    })

  chunks = _num_chunks(state_dict.keys())
  if cfg.style == "infinity" and chunks and cfg.depth % chunks:
    raise strict.ConversionError(
        context=f"{cfg.name}: {chunks} block_chunks do not divide depth "
        f"{cfg.depth}")
  blocks = []
  for layer in range(cfg.depth):
    p = _block_prefix(cfg, sd, layer, chunks)
    sa = "attn." if cfg.style == "var" else "sa."
    blk = {
        "sa": {
            "mat_qkv": {"kernel": common.linear(
                sd.take(p + sa + "mat_qkv.weight", (3 * c, c)))},
            "q_bias": sd.take(p + sa + "q_bias", (c,)),
            "v_bias": sd.take(p + sa + "v_bias", (c,)),
            "scale_mul": _reshape(sd.take(p + sa + "scale_mul_1H11",
                                          (1, h, 1, 1)), (h,)),
            "proj": _dense(sd, p + sa + "proj", c, c),
        },
        "ffn": {"fc1": _dense(sd, p + "ffn.fc1", c, f),
                "fc2": _dense(sd, p + "ffn.fc2", f, c)},
    }
    if cfg.shared_aln:
      blk["ada_gss"] = _reshape(sd.take(p + "ada_gss", (1, 1, 6, c)), (6, c))
    else:
      blk["ada_lin"] = _dense(sd, p + "ada_lin.1", c, 6 * c)
    if cfg.style == "infinity":
      blk["ca"] = {
          "mat_q": _dense(sd, p + "ca.mat_q", c, c),
          "mat_kv": _dense(sd, p + "ca.mat_kv", c, 2 * c, bias=False),
          "v_bias": sd.take(p + "ca.v_bias", (c,)),
          "proj": _dense(sd, p + "ca.proj", c, c),
      }
      blk["ca_norm"] = {"scale": sd.take(p + "ca_norm.weight", (c,)),
                        "bias": sd.take(p + "ca_norm.bias", (c,))}
    blocks.append(blk)
  sd.finish()
  params = {"stem": stem,
            "blocks": jax.tree.map(lambda *xs: np.stack(xs), *blocks)}
  expected = jax.eval_shape(lambda k: transformer.init_params(cfg, k),
                            jax.random.key(0))
  strict.check_against(params, expected, context=cfg.name)
  return params


def _reshape(x, shape):
  return None if x is None else np.reshape(x, shape)
