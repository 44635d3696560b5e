"""Scores of the emoji evaluation: shuffled baseline and text consistency.

Pure numpy on LPIPS distance matrices (`metrics.lpips`) and retrieval ranks
(`metrics.retrieval`); the application that generates the samples and
calls these is `toprovar_jax.evaluation.emoji` (its docstring says what is
measured and why).

  score_set            retrieval, shuffled baseline and consistency of one
                       caption set
  consistency          text-neighbour consistency (AUC against the emoji of
                       the nearest training captions, with references)

Dimension letters: N dataset emoji, C captions of a set, R samples per
caption, K text neighbours, E sentence width.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np

from toprovar_jax.metrics import retrieval


def _derangement(c: int) -> np.ndarray:
  """Caption i -> caption i + C/2 (mod C): fixed, and none maps to itself."""
  return (np.arange(c) + c // 2) % c


def _shuffled_baseline(distances: np.ndarray, own: np.ndarray,
                       samples_per_caption: int) -> Optional[Dict[str, Any]]:
  """Retrieval of ANOTHER caption's emoji by the same samples.

  Each sample is scored against the emoji of a different evaluated caption
  (`_derangement`). This is what the top-k rates would be if samples
  ignored their caption: it separates caption-specific likeness from
  samples that are merely close to many emoji (LPIPS has hubs: plain,
  simple glyphs sit near everything). None for fewer than two captions.
  """
  c = len(own)
  if c < 2:
    return None
  rank = retrieval.ranks(distances, np.repeat(own[_derangement(c)],
                                              samples_per_caption))
  return dict(top1=float(np.mean(rank <= 1)), top5=float(np.mean(rank <= 5)),
              median_rank=float(np.median(rank)))


def consistency(distances: np.ndarray, true_distances: np.ndarray, *,
                neighbours: np.ndarray, own: np.ndarray,
                samples_per_caption: int) -> Dict[str, Any]:
  """Text-neighbour consistency of one caption set (module docstring, 3).

  Args:
    distances: (C R, N) LPIPS of the samples (caption-major) to all emoji.
    true_distances: (C, N) LPIPS of each caption's own emoji to all emoji.
    neighbours: (C, K) dataset indices of each caption's text neighbours.
    own: (C,) dataset index of each caption's emoji.
    samples_per_caption: R.

  Returns:
    {"neighbour_auc", "random_neighbour_auc", "neighbour_win_rate",
     "true_emoji_neighbour_auc" (module docstring; the random ones None for
     C < 2), "nearest_caption_top5", "nearest_caption_median_rank" (rank
     among all N emoji of the nearest text neighbour's emoji)}.
  """
  c, r = len(own), samples_per_caption
  per_sample = lambda x: np.repeat(x, r, axis=0)
  auc = retrieval.set_auc(distances, per_sample(neighbours), per_sample(own))
  ceiling = retrieval.set_auc(true_distances, neighbours, own)
  nearest = retrieval.ranks(distances, per_sample(neighbours[:, 0]))
  out = dict(neighbour_auc=float(auc.mean()),
             true_emoji_neighbour_auc=float(ceiling.mean()),
             random_neighbour_auc=None, neighbour_win_rate=None,
             nearest_caption_top5=float(np.mean(nearest <= 5)),
             nearest_caption_median_rank=float(np.median(nearest)))
  if c >= 2:
    other = _derangement(c)
    rand = retrieval.set_auc(distances, per_sample(neighbours[other]),
                             per_sample(own))
    out.update(random_neighbour_auc=float(rand.mean()),
               neighbour_win_rate=float(np.mean(auc > rand)))
  return out


def score_set(distances: np.ndarray, true_distances: np.ndarray,
              own: np.ndarray, *, captions: Sequence[str],
              train_idx: np.ndarray, train_emb: np.ndarray,
              query_emb: np.ndarray, samples_per_caption: int,
              neighbours: int) -> Dict[str, Any]:
  """Retrieval, shuffled baseline and consistency of one caption set.

  Args:
    distances: (C R, N) LPIPS of the set's samples (caption-major) to all
      emoji.
    true_distances: (C, N) LPIPS of each caption's own emoji to all emoji.
    own: (C,) dataset index of each caption.
    captions: (N,) all dataset captions.
    train_idx: (N_train,) dataset indices of the training captions.
    train_emb: (N_train, E) their sentence embeddings.
    query_emb: (C, E) sentence embeddings of the set's captions.
    samples_per_caption: R.
    neighbours: K text neighbours.

  Returns:
    `retrieval.summarize` plus "shuffled_baseline" and "consistency".
  """
  r = samples_per_caption
  rank = retrieval.ranks(distances, np.repeat(own, r))
  summary = retrieval.summarize(
      rank, np.repeat([captions[i] for i in own], r), len(captions))
  summary["shuffled_baseline"] = _shuffled_baseline(distances, own, r)
  # Text neighbours among the training captions, never the caption itself.
  row_of = {int(i): j for j, i in enumerate(train_idx)}
  nb = retrieval.text_neighbours(
      query_emb, train_emb, neighbours,
      exclude=np.asarray([row_of.get(int(i), -1) for i in own]))
  summary["consistency"] = consistency(
      distances, true_distances, neighbours=train_idx[nb], own=own,
      samples_per_caption=r)
  summary["consistency"]["neighbours_example"] = {
      captions[i]: [captions[j] for j in train_idx[nb[k]]]
      for k, i in enumerate(own[:3])}
  return summary
