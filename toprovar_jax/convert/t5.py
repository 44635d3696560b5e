"""HF T5 encoder state_dict -> `t5.T5Encoder` params (pure numpy), and a
loader for (sharded) safetensors that reads only the encoder's tensors.

Key mapping (HF `T5EncoderModel` / `T5ForConditionalGeneration` names; torch
Linear weights are (out, in), flax kernels (in, out)):

  shared.weight | encoder.embed_tokens.weight       token_embedding
  encoder.block.0.layer.0.SelfAttention
      .relative_attention_bias.weight (R, H)         relative_attention_bias
  encoder.block.{i}.layer.0.layer_norm.weight        block_{i}/attention_norm
  encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}  block_{i}/attention/*
  encoder.block.{i}.layer.1.layer_norm.weight        block_{i}/mlp_norm
  encoder.block.{i}.layer.1.DenseReluDense.{wi_0,wi_1,wo}  block_{i}/mlp/*
  encoder.final_layer_norm.weight                    final_norm

The embedding is one tied table with two names (reference README §9):
`state_dict()` lists both, `save_pretrained` writes only `shared.weight`.
Either is accepted; when both are present they must be equal. `decoder.*`
and `lm_head.weight` (a full seq2seq checkpoint such as google/flan-t5-xl)
are ignored; every other tensor must be consumed (STYLE.md §9.24).

Dimension letters as in `t5.py`.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import re
from typing import Any, Dict, Mapping, Optional, Union

import ml_dtypes  # noqa: F401  Registers bfloat16 so BF16 shards load.
import numpy as np
import safetensors

from toprovar_jax.convert import common
from toprovar_jax.text import t5
from toprovar_jax.weights import strict

PathLike = Union[str, os.PathLike]
Params = Dict[str, Any]

EMBEDDING_KEYS = ("shared.weight", "encoder.embed_tokens.weight")
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_RELATIVE_BIAS_KEY = ("encoder.block.0.layer.0.SelfAttention."
                      "relative_attention_bias.weight")
_BLOCK_RE = re.compile(r"^encoder\.block\.(\d+)\.")


def is_encoder_key(key: str) -> bool:
  """True for tensors the encoder may need (not `decoder.*`/`lm_head`)."""
  return not key.startswith("decoder.") and key != "lm_head.weight"


# ----------------------------------------------------------------------------
# Conversion.
# ----------------------------------------------------------------------------


def _take_embedding(sd: common.StateDict, shape) -> Optional[np.ndarray]:
  present = [k for k in EMBEDDING_KEYS if sd.has(k)]
  if not present:
    # Recorded as missing under a name that lists both alternatives.
    return sd.take(" or ".join(EMBEDDING_KEYS), shape)
  tables = [sd.take(k, shape) for k in present]
  if len(tables) == 2 and tables[0] is not None and tables[1] is not None:
    if not np.array_equal(tables[0], tables[1]):
      raise ValueError(
          f"{EMBEDDING_KEYS[0]} and {EMBEDDING_KEYS[1]} differ (max |diff| "
          f"{np.max(np.abs(tables[0] - tables[1])):.3g}); T5 ties them, so "
          "this is not one encoder")
  return tables[0] if tables[0] is not None else tables[-1]


def convert_state_dict(state_dict: Mapping[str, Any],
                       config: t5.T5Config) -> Params:
  """Maps an HF T5 state_dict to `t5.T5Encoder(config)` params, strictly.

  Args:
    state_dict: {HF name: array}, e.g. from `load_encoder_state_dict`, or a
      full seq2seq checkpoint (`decoder.*` and `lm_head.weight` are ignored).
    config: the architecture the params are for.

  Returns:
    A params tree with float32 numpy leaves (fp16 / bf16 inputs are cast,
    exactly).

  Raises:
    strict.ConversionError: listing every missing, unexpected and mis-shaped
      key at once (e.g. a relative-bias table outside block 0).
    ValueError: both embedding names present with different values.
  """
  c, f, inner = config.d_model, config.d_ff, config.inner_dim
  if not isinstance(state_dict, common.RecordKeys):
    state_dict = {k: v for k, v in state_dict.items() if is_encoder_key(k)}
  sd = common.StateDict(state_dict,
                        context="T5 encoder state_dict")
  params: Params = {
      "token_embedding": _take_embedding(sd, (config.vocab_size, c)),
      "relative_attention_bias": sd.take(
          _RELATIVE_BIAS_KEY,
          (config.relative_attention_num_buckets, config.num_heads)),
  }

  def kernel(key, d_in, d_out):
    return {"kernel": common.linear(sd.take(key, (d_out, d_in)))}

  for i in range(config.num_layers):
    attn = f"encoder.block.{i}.layer.0"
    mlp = f"encoder.block.{i}.layer.1"
    params[f"block_{i}"] = {
        "attention_norm": {"scale": sd.take(f"{attn}.layer_norm.weight",
                                            (c,))},
        "attention": {
            "q": kernel(f"{attn}.SelfAttention.q.weight", c, inner),
            "k": kernel(f"{attn}.SelfAttention.k.weight", c, inner),
            "v": kernel(f"{attn}.SelfAttention.v.weight", c, inner),
            "o": kernel(f"{attn}.SelfAttention.o.weight", inner, c),
        },
        "mlp_norm": {"scale": sd.take(f"{mlp}.layer_norm.weight", (c,))},
        "mlp": {
            "wi_0": kernel(f"{mlp}.DenseReluDense.wi_0.weight", c, f),
            "wi_1": kernel(f"{mlp}.DenseReluDense.wi_1.weight", c, f),
            "wo": kernel(f"{mlp}.DenseReluDense.wo.weight", f, c),
        },
    }
  params["final_norm"] = {"scale": sd.take("encoder.final_layer_norm.weight",
                                           (c,))}
  sd.finish()
  # Guards the mapping itself: the tree must be exactly the module's.
  strict.check_against(params, t5.abstract_params(config),
                       context="T5 converter")
  return params


def config_from_state_dict(state_dict: Mapping[str, Any],
                           **overrides) -> t5.T5Config:
  """Infers a `T5Config` from tensor shapes alone (no config.json needed).

  Shapes give the vocabulary, widths, heads (from the (R, H) bias table),
  buckets and depth. `relative_attention_max_distance` (128) and
  `layer_norm_epsilon` (1e-6) leave no trace in shapes: they take the T5
  defaults unless overridden.

  Raises:
    ValueError: a tensor needed for the inference is absent, or the FFN is
      not gated (`wi_0`/`wi_1`).
  """
  names = set(state_dict)
  emb = next((k for k in EMBEDDING_KEYS if k in names), None)
  wi0 = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"
  needed = [k for k in (_RELATIVE_BIAS_KEY,
                        "encoder.block.0.layer.0.SelfAttention.q.weight")
            if k not in names]
  if emb is None:
    needed.insert(0, " or ".join(EMBEDDING_KEYS))
  if needed:
    raise ValueError(f"cannot infer the T5 config: missing {', '.join(needed)}")
  if wi0 not in names:
    raise ValueError("only the gated-GELU FFN (wi_0 / wi_1, T5 v1.1 / "
                     "Flan-T5) is supported")
  shape = lambda k: np.shape(state_dict[k])
  vocab, d_model = shape(emb)
  buckets, heads = shape(_RELATIVE_BIAS_KEY)
  inner = shape("encoder.block.0.layer.0.SelfAttention.q.weight")[0]
  blocks = {int(m.group(1)) for k in names if (m := _BLOCK_RE.match(k))}
  return t5.T5Config(**{**dict(
      vocab_size=int(vocab), d_model=int(d_model), d_kv=int(inner) // heads,
      num_heads=int(heads), d_ff=int(shape(wi0)[0]),
      num_layers=max(blocks) + 1,
      relative_attention_num_buckets=int(buckets)), **overrides})


# ----------------------------------------------------------------------------
# Safetensors.
# ----------------------------------------------------------------------------


def _shards(path: pathlib.Path) -> Dict[pathlib.Path, list]:
  """{shard file: [encoder keys in it]} for a folder, index or file."""
  if path.is_dir():
    path = path / INDEX_FILE if (path / INDEX_FILE).exists() else (
        path / SINGLE_FILE)
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist (expected {INDEX_FILE} "
                            f"or {SINGLE_FILE})")
  if path.name.endswith(".json"):
    weight_map = json.loads(path.read_text())["weight_map"]
    by_file = collections.defaultdict(list)
    for key, fname in weight_map.items():
      if is_encoder_key(key):
        by_file[path.parent / fname].append(key)
    missing = [str(p) for p in by_file if not p.exists()]
    if missing:
      raise FileNotFoundError(f"{path.name} names shards that are absent: "
                              f"{', '.join(sorted(missing))}")
    return dict(by_file)
  with safetensors.safe_open(str(path), framework="numpy") as f:
    return {path: [k for k in f.keys() if is_encoder_key(k)]}


def load_encoder_state_dict(path: PathLike) -> Dict[str, np.ndarray]:
  """Reads only the encoder tensors of a (sharded) safetensors checkpoint.

  Shards that hold only decoder tensors are never opened; inside a shard,
  tensors are read one by one (memory-mapped), so `decoder.*` and
  `lm_head.weight` never reach memory.

  Args:
    path: a checkpoint folder (with `model.safetensors.index.json`, or a
      single `model.safetensors`), the index json itself, or one
      `.safetensors` file.

  Returns:
    {HF name: array} in the stored dtype (F32 / F16 / BF16).

  Raises:
    FileNotFoundError: no checkpoint at `path`, or a shard the index names
      is absent.
    KeyError: the index names a tensor its shard lacks.
  """
  out = {}
  for fname, keys in _shards(pathlib.Path(path)).items():
    with safetensors.safe_open(str(fname), framework="numpy") as f:
      present = set(f.keys())
      absent = [k for k in keys if k not in present]
      if absent:
        raise KeyError(f"{fname.name} lacks {', '.join(sorted(absent))}, "
                       "which the index places there")
      for key in keys:
        out[key] = f.get_tensor(key)
  return out


def load_params(path: PathLike,
                config: Optional[t5.T5Config] = None) -> Params:
  """Reads and converts a checkpoint's encoder.

  Args:
    path: as `load_encoder_state_dict`.
    config: the architecture; None infers it from the tensor shapes
      (`config_from_state_dict`).

  Returns:
    The `t5.T5Encoder` params tree (numpy float32 leaves).
  """
  sd = load_encoder_state_dict(path)
  return convert_state_dict(sd, config or config_from_state_dict(sd))


def load_encoder_state_dict_bin(files) -> Dict[str, np.ndarray]:
  """Reads the encoder tensors of `pytorch_model*.bin` files (torch).

  The files are untrusted pickles: they are opened with
  `torch.load(weights_only=True, mmap=True)`, which refuses anything but
  tensors and plain containers, and tensors are memory-mapped, so
  `decoder.*` and `lm_head.weight` are never copied.

  Args:
    files: the `.bin` paths (one file, or the shards of an index).

  Returns:
    {HF name: float32 / float16 numpy array} (bf16 is cast to float32).

  Raises:
    ImportError: torch is missing (names the `convert` extra).
    ValueError: a file needs more than `weights_only` (names the file).
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("reading pytorch_model*.bin needs torch: "
                      "pip install -e .[convert]") from e
  out = {}
  for fname in files:
    try:
      sd = torch.load(str(fname), map_location="cpu", weights_only=True,
                      mmap=True)
    except Exception as e:  # pickle.UnpicklingError and friends
      raise ValueError(f"{fname}: not a plain tensor file that "
                       f"torch.load(weights_only=True) accepts ({e})") from e
    for key, value in sd.items():
      if is_encoder_key(key):
        if value.dtype == torch.bfloat16:
          value = value.float()
        out[key] = value.numpy().copy()
  return out
