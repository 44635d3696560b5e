"""The T5 tokenizer of a Flan-T5 folder: prompt -> token ids, no network.

Infinity tokenizes a prompt as the official `tools/run_infinity.py` does:
`AutoTokenizer.from_pretrained(t5_dir, legacy=True)` with
`model_max_length = 512`, then `tokenizer(prompt, max_length=512,
truncation=True)`. For a Flan-T5 folder that is the fast tokenizer read
from `tokenizer.json` (the Rust `tokenizers` library), which appends `</s>`
(id 1) through the file's post-processor; a longer prompt keeps its first
511 pieces and still ends in `</s>`.

Two readers, in this order:
* `tokenizer.json` with `tokenizers` (the `text` extra): the file's own
  padding and truncation settings are switched off (they are not the
  official call's) and the cap is applied here.
* `spiece.model` with `sentencepiece` (the `text` extra), for folders without
  a `tokenizer.json`: pieces as `T5Tokenizer(legacy=True)` makes them, then
  `</s>` appended.

Dimension letters: P prompts, T padded length.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import List, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, os.PathLike]

# T5's length cap: the official call truncates at 512 tokens, `</s>` kept.
T5_MAX_TOKENS = 512
TOKENIZER_JSON = "tokenizer.json"
SPIECE_MODEL = "spiece.model"
PAD_ID = 0
EOS_ID = 1


@dataclasses.dataclass(frozen=True)
class Tokenized:
  """Token ids of P prompts, padded on the right with `PAD_ID`.

  Attributes:
    ids: (P, T) int32, T = the longest kept prompt.
    mask: (P, T) int32, 1 = real token.
    counts: tokens of each prompt before truncation (`</s>` included).
  """
  ids: np.ndarray
  mask: np.ndarray
  counts: Tuple[int, ...]


class T5Tokenizer:
  """A Flan-T5 folder's tokenizer (`tokenizer.json` or `spiece.model`)."""

  def __init__(self, folder: PathLike):
    """Reads the tokenizer of `folder`.

    Raises:
      FileNotFoundError: neither file is in `folder` (names both).
      ImportError: the reader's package is missing (names the extra).
    """
    self.folder = pathlib.Path(folder)
    json_path = self.folder / TOKENIZER_JSON
    spiece_path = self.folder / SPIECE_MODEL
    if json_path.is_file():
      try:
        import tokenizers  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise ImportError("reading tokenizer.json needs the `tokenizers` "
                          "package: pip install -e .[text]") from e
      tok = tokenizers.Tokenizer.from_file(str(json_path))
      tok.no_padding()
      tok.no_truncation()
      self._json = tok
      self.source = str(json_path)
    elif spiece_path.is_file():
      try:
        import sentencepiece  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise ImportError("reading spiece.model needs the `sentencepiece` "
                          "package: pip install -e .[text]") from e
      self._json = None
      self._spm = sentencepiece.SentencePieceProcessor(
          model_file=str(spiece_path))
      self.source = str(spiece_path)
    else:
      raise FileNotFoundError(
          f"t5_dir: {self.folder} holds neither {TOKENIZER_JSON} nor "
          f"{SPIECE_MODEL} (the Flan-T5 tokenizer files)")

  def _ids(self, prompt: str) -> List[int]:
    """All ids of one prompt, `</s>` included, before the cap."""
    if self._json is not None:
      return list(self._json.encode(prompt, add_special_tokens=True).ids)
    return list(self._spm.encode(prompt)) + [EOS_ID]

  def tokenize(self, prompts: Sequence[str],
               max_tokens: int = T5_MAX_TOKENS) -> Tokenized:
    """Token ids as the official call makes them, cut at `max_tokens`.

    A prompt longer than the cap keeps its first `max_tokens - 1` ids and
    its final special token (`</s>`), as HF truncation does.

    Args:
      prompts: P strings.
      max_tokens: the cap (T5's 512; >= 1).

    Returns:
      `Tokenized`, padded to the longest kept prompt.
    """
    if max_tokens < 1:
      raise ValueError(f"max_tokens: must be >= 1, got {max_tokens}")
    rows, counts = [], []
    for p in prompts:
      ids = self._ids(p)
      counts.append(len(ids))
      if len(ids) > max_tokens:
        ids = ids[:max_tokens - 1] + ids[-1:]
      rows.append(ids)
    t = max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), t), PAD_ID, np.int32)
    mask = np.zeros((len(rows), t), np.int32)
    for i, r in enumerate(rows):
      ids[i, :len(r)] = r
      mask[i, :len(r)] = 1
    return Tokenized(ids=ids, mask=mask, counts=tuple(counts))
