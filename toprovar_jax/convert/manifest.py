"""Which tensors an official file must hold, derived from our architecture.

  Target        what a file converts into: kind ('transformer' | 'vqvae' |
                'bsq' | 't5') + the model config
  expected      {official key: torch shape} a file of that target holds,
                recorded by running our own converter on
                `common.RecordKeys` (no upstream code involved); transformer
                blocks are recorded for one layer and repeated over depth
  canonical     file key -> canonical key (Infinity's
                `block_chunks.{c}.module.{j}.` -> `blocks.{c*per+j}.`)
  check         a file's {key: tensor} against `expected`: every key present
                with its shape, nothing unknown except parameter-free buffers;
                raises one `ConversionError` listing all offenders
  as_json       the manifest record (names, shapes, total) that
                `third_party/<project>/manifests/*.json` holds

Key names are the official ones, without any file prefix.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from toprovar_jax.convert import common
from toprovar_jax.weights import strict

KINDS = ("transformer", "vqvae", "bsq", "t5")
# Parameter-free buffers official files may carry, by target kind.
BUFFERS = {
    "transformer": ("zero_k_bias", "lvl_1L", "attn_bias_for_masking"),
    "vqvae": ("quantize.ema_vocab_hit_SV",),
    "bsq": ("quantizer.lfq.mask", "quantize.lfq.mask"),
    "t5": (),
}
_CHUNK_RE = re.compile(r"^block_chunks\.(\d+)\.module\.(\d+)\.(.*)$")
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.*)$")


@dataclasses.dataclass(frozen=True)
class Target:
  """kind: one of KINDS; config: TransformerConfig / VQVAEConfig /
  BSQConfig / T5Config; name: for messages (variant or json file)."""
  kind: str
  config: Any
  name: str


def _record(target: Target) -> Dict[str, tuple]:
  from toprovar_jax.convert import bsq_vae, t5, transformer, vqvae  # pylint: disable=import-outside-toplevel
  from toprovar_jax.models import config as config_lib  # pylint: disable=import-outside-toplevel
  rec = common.RecordKeys()
  cfg = target.config
  if target.kind == "transformer":
    transformer.convert_transformer(rec, config_lib.replace(cfg, depth=1))
  elif target.kind == "vqvae":
    vqvae.convert_vqvae(rec, cfg, verify=False)
  elif target.kind == "bsq":
    bsq_vae.convert_bsq_vae(rec, cfg)
  elif target.kind == "t5":
    t5.convert_state_dict(rec, dataclasses.replace(cfg, num_layers=1))
  else:
    raise ValueError(f"target kind {target.kind!r} is not one of {KINDS}")
  return rec.taken


def expected(target: Target) -> Dict[str, tuple]:
  """{official key: shape} of a file for `target` (blocks over full depth)."""
  taken = _record(target)
  if target.kind == "bsq":  # the mask buffer is optional, not a parameter
    taken = {k: v for k, v in taken.items() if k not in BUFFERS["bsq"]}
  if target.kind == "t5":  # one tied table, saved as `shared.weight`
    taken.pop("encoder.embed_tokens.weight", None)
  depth = (target.config.depth if target.kind == "transformer" else
           target.config.num_layers if target.kind == "t5" else 0)
  if not depth:
    return dict(taken)
  block = re.compile(r"^(blocks|encoder\.block)\.0\.(.*)$")
  out = {}
  for key, shape in taken.items():
    m = block.match(key)
    if not m:
      out[key] = shape
    elif target.kind == "t5" and "relative_attention_bias" in key:
      out[key] = shape  # only block 0 holds the relative bias table
    else:
      for layer in range(depth):
        out[f"{m.group(1)}.{layer}.{m.group(2)}"] = shape
  return out


def canonical(keys, depth: int) -> Dict[str, str]:
  """{file key: canonical key}: `block_chunks` become global `blocks.{l}.`."""
  chunks = {int(m.group(1)) for k in keys if (m := _CHUNK_RE.match(k))}
  per = depth // len(chunks) if chunks and depth % len(chunks) == 0 else 0
  out = {}
  for k in keys:
    m = _CHUNK_RE.match(k)
    out[k] = (f"blocks.{int(m.group(1)) * per + int(m.group(2))}.{m.group(3)}"
              if m and per else k)
  return out


def layer_of(canonical_key: str) -> int:
  """The block index of a canonical transformer key, -1 for the stem."""
  m = _BLOCK_RE.match(canonical_key)
  return int(m.group(1)) if m else -1


def _wrapped(key: str, want: Mapping[str, tuple]) -> str:
  """The BSQ VAE's bare spelling (`conv_in.weight`) -> the official module
  spelling (`conv_in.conv.weight`), which both official loaders accept."""
  if key in want:
    return key
  base, _, leaf = key.rpartition(".")
  for wrapper in ("conv", "norm"):
    if f"{base}.{wrapper}.{leaf}" in want:
      return f"{base}.{wrapper}.{leaf}"
  return key


def _is_buffer(kind: str, key: str) -> bool:
  return any(key == b or key.endswith("." + b) or key.endswith(b)
             for b in BUFFERS[kind])


def check(sd: Mapping[str, Any], target: Target,
          want: Dict[str, tuple] = None) -> int:
  """Checks a file's tensors against `expected(target)` before converting.

  Args:
    sd: {file key: tensor with .shape} (file prefix stripped).
    target: what it should convert into.
    want: a precomputed `expected(target)`.
  Returns:
    The parameter total (elements of the expected tensors).
  Raises:
    ConversionError: missing, unexpected and mis-shaped keys, all listed.
  """
  want = expected(target) if want is None else want
  ignore = ((lambda k: k.startswith("decoder.") or k == "lm_head.weight"
             or k == "encoder.embed_tokens.weight")
            if target.kind == "t5" else (lambda k: False))
  depth = target.config.depth if target.kind == "transformer" else 0
  names = canonical(sd.keys(), depth) if depth else {k: k for k in sd}
  if target.kind == "bsq":
    names = {k: _wrapped(v, want) for k, v in names.items()}
  got = {names[k]: tuple(v.shape) for k, v in sd.items()}
  missing = [k for k in want if k not in got]
  unexpected = [k for k in got if k not in want and not ignore(k)
                and not _is_buffer(target.kind, k)]
  mism = [(k, got[k], tuple(s)) for k, s in want.items()
          if k in got and got[k] != tuple(s)]
  if missing or unexpected or mism:
    raise strict.ConversionError(missing=missing, unexpected=unexpected,
                                 mismatched=mism, context=target.name)
  return total(want)


def total(want: Mapping[str, tuple]) -> int:
  return int(sum(int(np.prod(s, dtype=np.int64)) for s in want.values()))


def as_json(target: Target, file: str, variants=()) -> Dict[str, Any]:
  """The manifest record of an official file for `target`.

  `variants`: the variant-table rows this file serves (default: its name).
  """
  want = expected(target)
  return {"file": file, "target": target.kind,
          "variants": list(variants or (target.name,)),
          "parameters": total(want),
          "tensors": {k: list(v) for k, v in sorted(want.items())}}


def compare_json(record: Mapping[str, Any], target: Target,
                 want: Dict[str, tuple] = None) -> Tuple[str, ...]:
  """The fields ('parameters', 'tensors') in which a stored manifest record
  differs from our architecture (`want`: a precomputed `expected`)."""
  want = expected(target) if want is None else want
  ours = {"parameters": total(want),
          "tensors": {k: list(v) for k, v in sorted(want.items())}}
  return tuple(f for f in ("parameters", "tensors")
               if record.get(f) != ours[f])
