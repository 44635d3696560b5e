"""Retrieval statistics of samples against a reference set.

Given a distance matrix D (M samples x N references, e.g. LPIPS) and, per
sample, the index of its true reference (the emoji of its caption):

  ranks            1-based rank of the true reference among all N
  summarize        top-k rates, per sample and per caption, median rank, AUC
  set_auc          how much closer a sample is to a set of references (its
                   caption's text neighbours) than to the other references
  text_neighbours  the K nearest reference captions in a sentence-embedding
                   space (MiniLM), the sets `set_auc` scores
  diversity        mean distance between the samples of one caption (from a
                   samples x samples matrix), next to that between samples of
                   different captions

Ties count against the sample: a reference exactly as close as the true one
ranks ahead of it, so a degenerate sample equidistant from everything ranks
last, never first. AUCs count ties as one half.

Dimension letters: M samples, N references, K references per set, E
embedding width, C captions.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np

TOP_K = (1, 5)


def ranks(distances: np.ndarray, true_index: np.ndarray) -> np.ndarray:
  """Rank of each sample's true reference, by increasing distance.

  Args:
    distances: (M, N) float.
    true_index: (M,) int in [0, N).

  Returns:
    (M,) int64 in [1, N]: 1 + the number of other references at a distance
    <= that of the true one.
  """
  distances = np.asarray(distances)
  true_index = np.asarray(true_index, np.int64)
  m, n = distances.shape
  if true_index.shape != (m,):
    raise ValueError(f"true_index: expected shape ({m},), got "
                     f"{true_index.shape}")
  if m and (true_index.min() < 0 or true_index.max() >= n):
    raise ValueError(f"true_index: values must be in [0, {n})")
  true_d = distances[np.arange(m), true_index]
  not_closer = distances <= true_d[:, None]
  # The true reference itself always satisfies <=; it is the "1 +".
  return not_closer.sum(axis=1).astype(np.int64)


def auc_of_rank(rank: np.ndarray, num_refs: int) -> np.ndarray:
  """Fraction of the other references farther than the true one.

  1 for rank 1, 0 for the last rank; 0.5 is chance (a random ordering).
  """
  return 1.0 - (np.asarray(rank, np.float64) - 1.0) / max(num_refs - 1, 1)


def summarize(rank: np.ndarray, groups: Sequence[Any], num_refs: int,
              top_k: Sequence[int] = TOP_K) -> Dict[str, Any]:
  """Top-k rates of ranks, over samples and per caption.

  Args:
    rank: (M,) ranks from `ranks`.
    groups: (M,) the caption (any hashable id) of each sample; captions are
      reported in order of first appearance.
    num_refs: N, for the AUC.
    top_k: the k of the top-k rates.

  Returns:
    {"num_samples", "num_captions",
     "top{k}": fraction of samples ranked <= k (the mean over captions of
       their per-caption rates when every caption has as many samples),
     "caption_top{k}_any": fraction of captions with any sample <= k,
     "median_rank", "mean_rank", "mean_auc" (`auc_of_rank`, chance 0.5),
     "per_caption": [{"caption", "ranks", "top{k}"}]}.
  """
  rank = np.asarray(rank, np.int64)
  groups = list(groups)
  if len(groups) != len(rank):
    raise ValueError(f"groups: {len(groups)} entries for {len(rank)} ranks")
  order = list(dict.fromkeys(groups))
  by_caption = {g: [] for g in order}
  for g, r in zip(groups, rank.tolist()):
    by_caption[g].append(r)
  out: Dict[str, Any] = dict(num_samples=int(len(rank)),
                             num_captions=len(order))
  for k in top_k:
    out[f"top{k}"] = float(np.mean(rank <= k)) if len(rank) else 0.0
    out[f"caption_top{k}_any"] = float(np.mean(
        [min(r) <= k for r in by_caption.values()])) if order else 0.0
  out["median_rank"] = float(np.median(rank)) if len(rank) else 0.0
  out["mean_rank"] = float(np.mean(rank)) if len(rank) else 0.0
  out["mean_auc"] = float(np.mean(auc_of_rank(rank, num_refs))
                          ) if len(rank) else 0.0
  out["per_caption"] = [
      dict(caption=g, ranks=r,
           **{f"top{k}": float(np.mean(np.asarray(r) <= k)) for k in top_k})
      for g, r in by_caption.items()]
  return out


def text_neighbours(query: np.ndarray, keys: np.ndarray, k: int, *,
                    exclude: np.ndarray | None = None) -> np.ndarray:
  """The k keys nearest each query by cosine similarity.

  Args:
    query: (C, E) embeddings (need not be unit vectors).
    keys: (N, E) embeddings.
    k: neighbours per query.
    exclude: optional (C,) key index per query that may not be chosen (a
      training caption's own row), -1 for none.

  Returns:
    (C, k) int64 key indices, nearest first (ties: lower index first).
  """
  q = np.asarray(query, np.float64)
  kk = np.asarray(keys, np.float64)
  q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
  kk = kk / np.maximum(np.linalg.norm(kk, axis=1, keepdims=True), 1e-12)
  sim = q @ kk.T
  if exclude is not None:
    exclude = np.asarray(exclude, np.int64)
    rows = np.nonzero(exclude >= 0)[0]
    sim[rows, exclude[rows]] = -np.inf
  if not 0 < k <= sim.shape[1] - (exclude is not None):
    raise ValueError(f"k={k}: need 0 < k <= {sim.shape[1]} usable keys")
  return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def set_auc(distances: np.ndarray, positives: np.ndarray,
            exclude: np.ndarray) -> np.ndarray:
  """How much closer each sample is to its positive set than to the rest.

  For sample i: the mean over its positives p of the fraction of negatives
  (every reference that is neither a positive nor `exclude[i]`) farther from
  it than p, ties one half. 1: every positive is closer than every negative;
  0.5: no preference (chance); a Mann-Whitney AUC.

  Args:
    distances: (M, N).
    positives: (M, K) int reference indices.
    exclude: (M,) int reference per sample left out of both sets (its own
      emoji, so that the score is about the positives), -1 for none.

  Returns:
    (M,) float64 in [0, 1].
  """
  distances = np.asarray(distances, np.float64)
  positives = np.asarray(positives, np.int64)
  m, n = distances.shape
  out = np.empty(m, np.float64)
  for i in range(m):
    negative = np.ones(n, bool)
    negative[positives[i]] = False
    if exclude[i] >= 0:
      negative[exclude[i]] = False
    d_neg = distances[i, negative]  # (n_neg,)
    d_pos = distances[i, positives[i]][:, None]  # (K, 1)
    wins = (d_neg > d_pos).sum(axis=1) + 0.5 * (d_neg == d_pos).sum(axis=1)
    out[i] = float(np.mean(wins / max(len(d_neg), 1)))
  return out


def diversity(distances: np.ndarray, group_size: int) -> Dict[str, Any]:
  """How different the samples of one caption are from each other.

  Args:
    distances: (M, M) symmetric sample-to-sample distances (e.g. LPIPS),
      samples grouped caption-major: rows g*R .. g*R + R - 1 are the R
      samples of caption g.
    group_size: R >= 2, samples per caption.

  Returns:
    within: mean over captions of the mean distance over the R (R - 1) / 2
      pairs of that caption's samples (0 = identical samples);
    per_caption: (C,) those per-caption means, as a list;
    between: mean distance between samples of different captions (the
      scale `within` is read against; None for a single caption);
    ratio: within / between (None without `between`).

  Raises:
    ValueError: not square, R < 2, or M not a multiple of R.
  """
  d = np.asarray(distances, np.float64)
  m = d.shape[0]
  if d.ndim != 2 or d.shape[1] != m:
    raise ValueError(f"distances: expected a square (M, M) matrix, got "
                     f"{d.shape}")
  if group_size < 2 or m % group_size:
    raise ValueError(f"group_size: {group_size} must be >= 2 and divide the "
                     f"{m} samples")
  c, r = m // group_size, group_size
  blocks = d.reshape(c, r, c, r)
  own = blocks[np.arange(c), :, np.arange(c), :]  # (C, R, R)
  upper = np.triu_indices(r, k=1)
  per_caption = own[:, upper[0], upper[1]].mean(axis=1)  # (C,)
  between = None
  if c > 1:
    other = ~np.eye(c, dtype=bool)[:, None, :, None].repeat(r, 1).repeat(r, 3)
    between = float(blocks[other].mean())
  within = float(per_caption.mean())
  return dict(within=within, per_caption=per_caption.tolist(),
              between=between,
              ratio=None if not between else within / between)
