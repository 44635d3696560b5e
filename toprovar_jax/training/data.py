"""The data side of training: model pair, dataset split, per-step batches.

The glue of `experiments/train.py`: `get_models` resolves a config's
variant name (a row of the one variant table, `models.config`; the
test-only `_emoji_tiny` is one) to the two static model configs; `split`,
`caption_features` and `make_batch_fn` turn the emoji dataset and the
caption features into per-step numpy batches.

Batches are a pure function of the step: indices walk through per-epoch
permutations drawn from `default_rng((seed, 1, epoch))`, and the augmentation
of `data.emoji` draws from `default_rng((seed, 0, step))`, so a resumed run
sees exactly the batches an uninterrupted one would (a (seed, step) pair
rather than seed + step keeps different seeds' streams apart).
"""

from __future__ import annotations

import concurrent.futures
import functools
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from toprovar_jax.data import augment as augment_lib
from toprovar_jax.data import emoji
from toprovar_jax.models import config as config_lib

def get_models(variant: str) -> Tuple[config_lib.TransformerConfig,
                                      config_lib.BSQConfig]:
  """(transformer config, BSQ tokenizer config) of a trainable variant.

  Raises:
    ValueError: unknown variant, or one without a BSQ tokenizer (only
      Infinity-style models train here).
  """
  model = config_lib.get_variant(variant)
  tok = config_lib.get_tokenizer(variant)
  if model.style != "infinity" or not isinstance(tok, config_lib.BSQConfig):
    raise ValueError(f"model.variant: {variant!r} is not an Infinity-style "
                     "model with a BSQ tokenizer; only those train here")
  return model, tok


def image_size(model: config_lib.TransformerConfig,
               tok: config_lib.BSQConfig) -> int:
  """Training image side: final latent grid times the tokenizer stride."""
  h, w = config_lib.vae_grid(model)
  if h != w:
    raise ValueError(f"model.schedule: final grid {(h, w)} is not square")
  return h * tok.stride


def vae_schedule(model: config_lib.TransformerConfig
                 ) -> config_lib.Schedule:
  """The VAE grid (h, w) of every scale: what the tokenizer quantises at."""
  return tuple(config_lib.vae_grid(model, i) for i in range(model.num_scales))


def split(dataset: emoji.EmojiDataset) -> Tuple[np.ndarray, np.ndarray]:
  """(train, eval) boolean masks of the dataset's emoji.

  Train is everything not held out, eval the held-out emoji; a dataset that
  is all one or the other (a tiny test set) uses everything for both.
  """
  heldout = np.asarray(dataset.heldout, bool)
  if 0 < heldout.sum() < len(heldout):
    return ~heldout, heldout
  everything = np.ones(len(heldout), bool)
  return everything, everything


def caption_features(path: str, captions) -> Tuple[np.ndarray, np.ndarray]:
  """Token features of `captions` from an `encode_captions.py` npz.

  Args:
    path: npz with captions (M,), token_features (M, T, Ct), mask (M, T).
    captions: (N,) captions to look up (by string, so the two files need
      not share an order).

  Returns:
    text (N, T, Ct) float32 and text_mask (N, T) bool.

  Raises:
    ValueError: some captions have no features (the count and examples).
  """
  with np.load(path, allow_pickle=False) as f:
    rows = caption_rows(f, captions, path)
    return (f["token_features"][rows].astype(np.float32),
            f["mask"][rows].astype(bool))


def caption_rows(npz, captions, path) -> np.ndarray:
  """(N,) int64 rows of `captions` in an open `encode_captions.py` npz.

  Raises:
    ValueError: some captions are not in the file (count and examples).
  """
  row = {c: i for i, c in enumerate(npz["captions"].tolist())}
  missing = [c for c in captions if c not in row]
  if missing:
    raise ValueError(f"{path}: no features for {len(missing)} captions, "
                     f"e.g. {missing[:3]}; rerun encode_captions.py")
  return np.array([row[c] for c in captions], np.int64)


def make_batch_fn(rgba: np.ndarray, *, batch_size: int, image_size: int,
                  seed: int, workers: int = 1,
                  text: Optional[np.ndarray] = None,
                  text_mask: Optional[np.ndarray] = None,
                  augment_config: augment_lib.AugmentConfig = (
                      augment_lib.AugmentConfig())
                  ) -> Callable[[int], Dict[str, np.ndarray]]:
  """step -> batch of augmented emoji (and their caption features).

  Args:
    rgba: (N, S, S, 4) uint8 training emoji.
    batch_size: B.
    image_size: S.
    seed: data seed.
    workers: threads that augment slices of one batch in parallel. numpy
      releases the GIL in the heavy parts: measured on 2 cores, a 128-image
      batch at 128 px took 260 ms with 1 thread and 104 ms with 2 (processes:
      140 ms, pickling). The result does not depend on it.
    text, text_mask: (N, T, Ct) and (N, T) caption features, row-aligned
      with `rgba` (transformer stage), or None.
    augment_config: the augmentation ranges (`augment_lib.AugmentConfig`).

  Returns:
    fn(step) -> {"images": (B, S, S, 3) uint8} plus "text" / "text_mask";
    images are `augment_lib.augment` outputs before normalisation (the device
    maps them to [-1, 1]: a quarter of the host-to-device bytes).
  """
  n = len(rgba)
  workers = max(workers, 1)
  pool = concurrent.futures.ThreadPoolExecutor(workers)

  @functools.lru_cache(maxsize=8)
  def permutation(epoch):
    return np.random.default_rng((seed, 1, epoch)).permutation(n)

  def augment(idx, aug, i, j):
    return augment_lib.apply_augment(rgba[idx[i:j]], augment_lib.AugmentParams(
        background=aug.background[i:j], scale=aug.scale[i:j],
        shift=aug.shift[i:j]))

  def fn(step: int) -> Dict[str, np.ndarray]:
    pos = step * batch_size + np.arange(batch_size)
    idx = np.concatenate([permutation(e)[pos[pos // n == e] % n]
                          for e in np.unique(pos // n)])
    aug = augment_lib.sample_augment_params(
        np.random.default_rng((seed, 0, step)), batch_size=batch_size,
        image_size=image_size, config=augment_config)
    cuts = np.linspace(0, batch_size, workers + 1).astype(int)
    parts = [pool.submit(augment, idx, aug, i, j)
             for i, j in zip(cuts[:-1], cuts[1:]) if j > i]
    batch = dict(images=np.concatenate([p.result() for p in parts]))
    if text is not None:
      batch.update(text=text[idx], text_mask=text_mask[idx])
    return batch

  return fn
