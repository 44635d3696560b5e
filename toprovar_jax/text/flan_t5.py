"""A Flan-T5 folder -> prompt features for Infinity (host numpy out).

The user's downloaded `flan-t5-xl/` folder (the HF layout) holds
`config.json`, the weights (`model.safetensors`, sharded safetensors with
`model.safetensors.index.json`, or `pytorch_model*.bin`) and the tokenizer
(`tokenizer.json` or `spiece.model`). `FlanT5TextEncoder.from_folder` reads
all three locally (no network), converts the encoder's weights strictly
(`convert.t5`) and encodes prompts as the official `encode_prompt` does:
tokens capped at 512 (`t5_tokenizer`), `last_hidden_state` of the encoder,
the rows of the real tokens kept. The official code runs the encoder in
fp16; this one runs fp32 at full matmul precision.

Features are cached per prompt string: a prompt seen before (a repeated
prompt, the next batch, the next plan) is not encoded again.

Dimension letters: P prompts, T tokens, C d_model (Ct, the text width).
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from typing import Dict, List, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax.convert import t5 as t5_convert
from toprovar_jax.text import t5
from toprovar_jax.text import t5_tokenizer

PathLike = Union[str, os.PathLike]

# `config.json` fields that `t5.T5Config` takes.
_CONFIG_FIELDS = ("vocab_size", "d_model", "d_kv", "num_heads", "d_ff",
                  "num_layers", "relative_attention_num_buckets",
                  "relative_attention_max_distance", "layer_norm_epsilon",
                  "feed_forward_proj")


def read_config(folder: PathLike) -> t5.T5Config:
  """`t5.T5Config` from a folder's `config.json` (HF field names).

  Raises:
    FileNotFoundError: no config.json (names the folder).
    ValueError: a field is missing or unsupported (names it).
  """
  path = pathlib.Path(folder) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"t5_dir: {folder} has no config.json")
  raw = json.loads(path.read_text())
  required = _CONFIG_FIELDS[:6]
  missing = [k for k in required if k not in raw]
  if missing:
    raise ValueError(f"{path}: missing {', '.join(missing)}")
  kw = {k: raw[k] for k in _CONFIG_FIELDS if k in raw}
  try:
    return t5.T5Config(**kw)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None


def read_state_dict(folder: PathLike) -> Dict[str, np.ndarray]:
  """The encoder tensors of a folder: safetensors first, else `.bin`.

  Raises:
    FileNotFoundError: neither weight format is present (names both).
  """
  folder = pathlib.Path(folder)
  if ((folder / t5_convert.INDEX_FILE).exists()
      or (folder / t5_convert.SINGLE_FILE).exists()):
    return t5_convert.load_encoder_state_dict(folder)
  bins = sorted(folder.glob("pytorch_model*.bin"))
  if bins:
    return t5_convert.load_encoder_state_dict_bin(bins)
  raise FileNotFoundError(
      f"t5_dir: {folder} holds no {t5_convert.SINGLE_FILE}, "
      f"{t5_convert.INDEX_FILE} or pytorch_model*.bin")


@functools.partial(jax.jit, static_argnames=("config",))
def _hidden(params, ids, mask, *, config):
  return t5.T5Encoder(config).apply({"params": params}, ids, mask)


class FlanT5TextEncoder:
  """Tokenizer + converted encoder of one Flan-T5 folder, with a cache."""

  def __init__(self, config: t5.T5Config, params, tokenizer, name: str):
    self.config = config
    self.params = jax.tree.map(jnp.asarray, params)
    self.tokenizer = tokenizer
    self.name = name
    self._cache: Dict[Tuple[str, int], Tuple[np.ndarray, int]] = {}
    self.encoded = 0  # Prompts run through the encoder (cache misses).

  @classmethod
  def from_folder(cls, folder: PathLike) -> "FlanT5TextEncoder":
    """Reads config.json, the encoder weights and the tokenizer.

    Raises:
      FileNotFoundError / ValueError: a missing or bad file (names it).
      strict.ConversionError: weights that do not fit config.json.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
      raise FileNotFoundError(f"t5_dir: {folder} is not a folder")
    config = read_config(folder)
    tokenizer = t5_tokenizer.T5Tokenizer(folder)
    params = t5_convert.convert_state_dict(read_state_dict(folder), config)
    return cls(config, params, tokenizer, name=f"flan-t5:{folder.name}")

  def encode(self, prompts: Sequence[str],
             max_tokens: int = t5_tokenizer.T5_MAX_TOKENS
             ) -> Tuple[List[np.ndarray], List[int]]:
    """Features of the real tokens of each prompt.

    Args:
      prompts: P strings.
      max_tokens: the cap (T5's 512, or a smaller static text length).

    Returns:
      (features, counts): per prompt a (n_p, C) float32 array, n_p <=
      max_tokens rows (`</s>` included), and its token count before
      truncation.
    """
    todo = sorted({p for p in prompts if (p, max_tokens) not in self._cache})
    if todo:
      tok = self.tokenizer.tokenize(todo, max_tokens)
      hidden = np.asarray(_hidden(self.params, jnp.asarray(tok.ids),
                                  jnp.asarray(tok.mask), config=self.config),
                          np.float32)
      for i, p in enumerate(todo):
        n = int(tok.mask[i].sum())
        self._cache[(p, max_tokens)] = (hidden[i, :n], tok.counts[i])
      self.encoded += len(todo)
    hits = [self._cache[(p, max_tokens)] for p in prompts]
    return [h for h, _ in hits], [c for _, c in hits]
