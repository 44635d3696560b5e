"""Per-sample conditioning of a run: class labels or prompt features.

`make_conditions` validates labels (VAR) or prompts (Infinity), encodes the
prompts with the model's text encoder (`toprovar_jax.text.features`), pads
them to the static text length and cycles the conditions to the number of
samples. Everything here is host numpy; the runner
(`toprovar_jax.sampling.runner`) cuts it into batches.

Dimension letters: N samples, T static text length, Ct text feature width.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Optional, Sequence, Tuple

from absl import logging
import numpy as np

from toprovar_jax.models import config as config_lib
from toprovar_jax.text import features


def field_error(field: str, message: str) -> ValueError:
  """The error of a bad config field: 'config.<field>: <message>'."""
  return ValueError(f"config.{field}: {message}")


def read_prompts_file(path: str, *, field: str) -> Tuple[str, ...]:
  """The prompts (or VAR class ids, as text) of a file: one a line, UTF-8,
  stripped, blank lines skipped (SPEC §9: prompts can always come from a
  file).

  Args:
    path: the file.
    field: what the error names ('--prompts', "config arg 'prompts_file'").

  Raises:
    ValueError: '<field>: ...' naming the path, one line: a missing or
      unreadable file, one that is not UTF-8, or one with no prompt.
  """
  try:
    text = pathlib.Path(path).read_text(encoding="utf-8")
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"{field}: cannot read {str(path)!r}: {e}") from None
  lines = tuple(line.strip() for line in text.splitlines() if line.strip())
  if not lines:
    raise ValueError(f"{field}: {str(path)!r} holds no prompt (one per line)")
  return lines


@dataclasses.dataclass(frozen=True, eq=False)
class Conditions:
  """Validated per-sample conditioning of one run (host numpy).

  Attributes:
    labels: (N,) int32 class ids (VAR) or None.
    prompts: N prompt strings (Infinity) or ().
    text: (N, T, Ct) float32 features, zero-padded to T (Infinity) or None.
    text_mask: (N, T) bool, True = real token (Infinity) or None.
    text_lengths: tokens kept per prompt (after truncation).
    truncated: per prompt, whether it was cut to T.
    text_features: what made `text` ('flan-t5:<folder>',
      'all-MiniLM-L6-v2' or 'placeholder_text_features'), or '' (VAR).
  """
  labels: Optional[np.ndarray] = None
  prompts: Tuple[str, ...] = ()
  text: Optional[np.ndarray] = None
  text_mask: Optional[np.ndarray] = None
  text_lengths: Tuple[int, ...] = ()
  truncated: Tuple[bool, ...] = ()
  text_features: str = ""

  @property
  def num_samples(self) -> int:
    if self.labels is not None:
      return len(self.labels)
    return len(self.text) if self.text is not None else len(self.prompts)


def _cycle(items: Sequence[Any], num_samples: int) -> list:
  n = num_samples or len(items)
  return [items[i % len(items)] for i in range(n)]


def make_conditions(model: config_lib.TransformerConfig, *,
                    labels: Sequence[int] = (), prompts: Sequence[str] = (),
                    num_samples: int = 0, text_len: int = 0,
                    t5_dir: str = "") -> Conditions:
  """Validates labels (VAR) or prompts (Infinity) and builds the inputs.

  Args:
    model: the transformer config (its style picks labels or prompts).
    labels: class ids, VAR only.
    prompts: prompt strings, Infinity only; encoded with the model's text
      encoder (`features.text_encoder_name`: MiniLM or placeholder
      features).
    num_samples: images in all; 0 = one per condition, else the conditions
      are cycled.
    text_len: static padded text length T (Infinity).
    t5_dir: a Flan-T5 folder; '' = the model's own encoder (MiniLM for the
      emoji models, else placeholder features).

  Returns:
    Conditions with `num_samples` rows.

  Raises:
    ValueError: naming the field: an empty list, a label that is not an int
      in [0, num_classes), a prompt that is not a string.
  """
  labels, prompts = list(labels), list(prompts)
  if model.style == "var":
    if not labels:
      raise field_error("sampling.labels", f"is empty; {model.name} needs at "
                        "least one ImageNet class id")
    for i, lab in enumerate(labels):
      if isinstance(lab, bool) or not isinstance(lab, (int, np.integer)):
        raise field_error(f"sampling.labels[{i}]",
                          f"{lab!r} is not an integer")
      if not 0 <= lab < model.num_classes:
        raise field_error(f"sampling.labels[{i}]", f"{lab} is out of range "
                          f"[0, {model.num_classes})")
    return Conditions(
        labels=np.asarray(_cycle(labels, num_samples), np.int32))

  if not prompts:
    raise field_error("sampling.prompts", f"is empty; {model.name} needs at "
                      "least one prompt")
  for i, p in enumerate(prompts):
    if not isinstance(p, str):
      raise field_error(f"sampling.prompts[{i}]", f"{p!r} is not a string")
  # Features and warnings per listed prompt, not per (cycled) sample.
  encoder = features.text_encoder_name(model)
  if t5_dir:
    feats, counts, encoder = features.t5_text_features(
        prompts, t5_dir=t5_dir, text_dim=model.text_dim, text_len=text_len)
  elif encoder == features.MINILM_TEXT:
    feats, counts = features.minilm_text_features(prompts, text_len=text_len)
  else:
    counts = [features.placeholder_token_count(p) for p in prompts]
    feats = [features.placeholder_text_features(
        p, text_dim=model.text_dim, text_len=text_len) for p in prompts]
  for i, p in enumerate(prompts):
    if counts[i] > text_len:
      # SPEC §11: over-long prompts are cut with a warning, like T5's cap.
      logging.warning("sampling.prompts[%d] has %d tokens, more than "
                      "sampling.text_len=%d; truncated to its first %d "
                      "tokens: %r", i, counts[i], text_len, text_len, p[:80])
  order = _cycle(range(len(prompts)), num_samples)
  text = np.zeros((len(order), text_len, model.text_dim), np.float32)
  mask = np.zeros((len(order), text_len), bool)
  for row, k in enumerate(order):
    text[row, :len(feats[k])] = feats[k]
    mask[row, :len(feats[k])] = True
  prompts = tuple(prompts[k] for k in order)
  lengths = [len(feats[k]) for k in order]
  truncated = [counts[k] > text_len for k in order]
  return Conditions(prompts=prompts, text=text, text_mask=mask,
                    text_lengths=tuple(lengths), truncated=tuple(truncated),
                    text_features=encoder)
