"""Running attention-entropy statistics of dense calibration runs (SPEC §5).

A calibration run generates images densely with the entropy of every
(scale, layer, token) recorded (`SamplingConfig(record_entropy=True)`) and
folds each image into an `EntropyStatistics`: running sums whose size does
not grow with the number of images, except where the statistic needs every
value (the median of ϱ_l: L floats per image). Everything the three
decision levels of `sparsity.calibration` read is here:

  rho_sum       (S,)        Σ over images of ρ_s: the fraction of scale s's
                            tokens whose layer-mean entropy H_i^s is below
                            that scale's mean (SPEC §5 scale level)
  entropy_sum   (S, L)      Σ over images of the token-mean entropy of each
                            layer at each scale (curves, not decisions)
  ratios        (n, L)      ϱ_l = σ1/σ2 of each layer's h×w entropy map at
                            the representative scale, one row per image
                            (∞ where σ2 ≤ 1e-6·σ1: a rank-1 map)
  map_sum       (L, h, w)   Σ of those maps (the entropy_maps figure)
  hist_count,   (S, L, B+1) histogram of the mean-normalised entropy
  hist_sum                  Ĥ_i = H_i / mean_j H_j per (image, scale, layer):
                            counts and Σ Ĥ per bin of width hist_max / B,
                            the last bin [hist_max, ∞). The token gate is
                            linear in Ĥ between its clip points, so an
                            expected kept count read from (count, Σ Ĥ) is
                            exact except in the one or two bins holding a
                            clip point (`expected_kept`).
  samples       (k, L, ΣN)  the full entropy of the first k images (the
                            kept-token figure), NaN-free

`to_bytes` / `load`: one .npz that the run rewrites atomically after every
batch, so a run interrupted between two batches resumes from the last saved
image (`evaluation.calibration`).

Dimension letters: S scales, s scale index, L layers, N_s tokens of scale s,
B histogram bins, n images folded in, k sample images kept, h×w the
representative scale's grid.
"""

from __future__ import annotations

import dataclasses
import io as std_io
import json
import os
from typing import Optional, Sequence, Tuple, Union

import numpy as np

# A map whose second singular value is below this fraction of the first is
# rank 1: ϱ = ∞ (the exact value is noise).
RANK1_TOL = 1e-6
_ARRAYS = ("rho_sum", "entropy_sum", "ratios", "map_sum", "hist_count",
           "hist_sum", "samples")


def layer_ratio(entropy_map: np.ndarray) -> float:
  """ϱ = σ1/σ2 of an (h, w) entropy map; ∞ for rank ≤ 1 (or a 1-row map)."""
  sv = np.linalg.svd(np.asarray(entropy_map, np.float64), compute_uv=False)
  if sv.size < 2 or sv[1] <= RANK1_TOL * sv[0]:
    return float("inf")
  return float(sv[0] / sv[1])


def low_entropy_ratio(entropy: np.ndarray) -> float:
  """ρ of one scale of one image: entropy (L, N_s) -> the fraction of
  tokens whose layer-mean entropy is below its mean over the tokens."""
  h = np.mean(np.asarray(entropy, np.float64), axis=0)
  return float(np.mean(h < np.mean(h)))


def normalised_entropy(entropy: np.ndarray) -> np.ndarray:
  """Ĥ = H / mean_j H_j per layer: (L, N_s) -> (L, N_s) float64; a layer
  whose entropies are all 0 (one key) gives Ĥ = 1."""
  h = np.asarray(entropy, np.float64)
  mean = np.mean(h, axis=-1, keepdims=True)
  safe = np.where(mean > 0, mean, 1.0)
  return np.where(mean > 0, h / safe, 1.0)


@dataclasses.dataclass(eq=False)
class EntropyStatistics:
  """Running statistics of a calibration run (see module docstring).

  Attributes:
    schedule: (h, w) per scale (all S scales are generated densely).
    num_layers: L.
    rep_scale: index of the representative scale of the layer level.
    hist_bins: B; hist_max: upper end of the last regular bin.
    num_samples: k, images whose full entropy is kept.
    fingerprint: what the run was made from (model, prompts, seed, ...);
      a resumed run must match it.
    num_images: n, images folded in so far.
  """
  schedule: Tuple[Tuple[int, int], ...]
  num_layers: int
  rep_scale: int
  hist_bins: int = 400
  hist_max: float = 4.0
  num_samples: int = 4
  fingerprint: str = ""
  num_images: int = 0
  rho_sum: np.ndarray = None
  entropy_sum: np.ndarray = None
  ratios: np.ndarray = None
  map_sum: np.ndarray = None
  hist_count: np.ndarray = None
  hist_sum: np.ndarray = None
  samples: np.ndarray = None

  def __post_init__(self):
    self.schedule = tuple(tuple(int(v) for v in hw) for hw in self.schedule)
    s, l = len(self.schedule), self.num_layers
    if not 0 <= self.rep_scale < s:
      raise ValueError(f"rep_scale: {self.rep_scale} is outside [0, {s})")
    h, w = self.schedule[self.rep_scale]
    shapes = dict(rho_sum=(s,), entropy_sum=(s, l), ratios=(0, l),
                  map_sum=(l, h, w), hist_count=(s, l, self.hist_bins + 1),
                  hist_sum=(s, l, self.hist_bins + 1),
                  samples=(0, l, self.total_tokens))
    for name, shape in shapes.items():
      if getattr(self, name) is None:
        setattr(self, name, np.zeros(shape, np.float64))

  @property
  def tokens_per_scale(self) -> Tuple[int, ...]:
    return tuple(h * w for h, w in self.schedule)

  @property
  def total_tokens(self) -> int:
    return sum(self.tokens_per_scale)

  # -- folding images in ------------------------------------------------------

  def add_image(self, entropy: Sequence[np.ndarray]) -> None:
    """Folds one image in: entropy[s] is its (L, N_s) map at scale s."""
    if len(entropy) != len(self.schedule):
      raise ValueError(f"entropy: {len(entropy)} scales, expected "
                       f"{len(self.schedule)}")
    edges = self.hist_edges()
    for s, ent in enumerate(entropy):
      ent = np.asarray(ent, np.float64)
      want = (self.num_layers, self.tokens_per_scale[s])
      if ent.shape != want or not np.all(np.isfinite(ent)):
        raise ValueError(f"entropy[{s}]: expected a finite {want} map of a "
                         f"dense run, got {ent.shape}")
      self.rho_sum[s] += low_entropy_ratio(ent)
      self.entropy_sum[s] += ent.mean(axis=1)
      hn = normalised_entropy(ent)
      bins = np.minimum(np.searchsorted(edges, hn, side="right") - 1,
                        self.hist_bins)
      for l in range(self.num_layers):
        self.hist_count[s, l] += np.bincount(
            bins[l], minlength=self.hist_bins + 1)
        self.hist_sum[s, l] += np.bincount(
            bins[l], weights=hn[l], minlength=self.hist_bins + 1)
    h, w = self.schedule[self.rep_scale]
    maps = np.asarray(entropy[self.rep_scale], np.float64).reshape(-1, h, w)
    self.map_sum += maps
    self.ratios = np.concatenate(
        [self.ratios, [[layer_ratio(m) for m in maps]]])
    if len(self.samples) < self.num_samples:
      flat = np.concatenate([np.asarray(e, np.float64) for e in entropy], 1)
      self.samples = np.concatenate([self.samples, flat[None]])
    self.num_images += 1

  def add_batch(self, entropy: Sequence[np.ndarray], rows: int) -> None:
    """Folds in the first `rows` images of a batch: entropy[s] is the
    sampler's (L, B, N_s) array of scale s."""
    for b in range(rows):
      self.add_image([np.asarray(e)[:, b] for e in entropy])

  # -- what the decisions read ------------------------------------------------

  def hist_edges(self) -> np.ndarray:
    """(B+1,) left edges of the bins (the last bin is open above)."""
    return np.linspace(0.0, self.hist_max, self.hist_bins + 1)

  def _need_images(self):
    if self.num_images == 0:
      raise ValueError("no calibration images folded in yet")

  def rho(self) -> np.ndarray:
    """(S,) ρ_s, the mean over images."""
    self._need_images()
    return self.rho_sum / self.num_images

  def mean_entropy(self) -> np.ndarray:
    """(S, L) token-mean entropy per scale and layer, mean over images."""
    self._need_images()
    return self.entropy_sum / self.num_images

  def median_ratios(self) -> np.ndarray:
    """(L,) ϱ_l, the median over images (∞ where most maps are rank 1)."""
    self._need_images()
    return np.median(self.ratios, axis=0)

  def mean_maps(self) -> np.ndarray:
    """(L, h, w) mean entropy maps at the representative scale."""
    self._need_images()
    return self.map_sum / self.num_images

  def expected_kept(self, scale: int, layer: int, coef: float,
                    alpha_min: float, alpha_max: float) -> float:
    """Mean over images of Σ_i P_keep(i) for one (scale, layer), with
    P_keep = 1 − clip(α_min + (α_max − α_min)·coef·Ĥ_i, 0, 1) and coef =
    φ(s)·R_l. Each bin contributes count·P_keep(its mean Ĥ): exact where
    P_keep is linear over the bin."""
    self._need_images()
    count = self.hist_count[scale, layer]
    total = self.hist_sum[scale, layer]
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    p = 1.0 - np.clip(alpha_min + (alpha_max - alpha_min) * coef * mean,
                      0.0, 1.0)
    return float(np.sum(count * p) / self.num_images)

  # -- saving -----------------------------------------------------------------

  def to_bytes(self) -> bytes:
    """Every field as one .npz file's bytes (write them atomically:
    `toprovar_jax.io.write_bytes_atomic`)."""
    meta = dict(schedule=self.schedule, num_layers=self.num_layers,
                rep_scale=self.rep_scale, hist_bins=self.hist_bins,
                hist_max=self.hist_max, num_samples=self.num_samples,
                fingerprint=self.fingerprint, num_images=self.num_images)
    buf = std_io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)),
             **{k: getattr(self, k) for k in _ARRAYS})
    return buf.getvalue()

  @classmethod
  def load(cls, path: Union[str, os.PathLike]) -> "EntropyStatistics":
    """Reads a file of `to_bytes` (data only: no pickles)."""
    with np.load(path, allow_pickle=False) as z:
      meta = json.loads(str(z["meta"]))
      arrays = {k: np.array(z[k]) for k in _ARRAYS}
    return cls(**meta, **arrays)


def find_rep_scale(schedule: Sequence[Tuple[int, int]], side: int) -> int:
  """Index of the scale whose larger side is nearest `side` (the larger
  scale on a tie); ValueError when side < 1."""
  if side < 1:
    raise ValueError(f"rep_side: must be >= 1, got {side}")
  dist = [(abs(max(hw) - side), -s) for s, hw in enumerate(schedule)]
  return -min(dist)[1]


def check_fingerprint(stats: Optional[EntropyStatistics],
                      fingerprint: str) -> None:
  """ValueError unless saved statistics were made from `fingerprint`."""
  if stats is not None and stats.fingerprint != fingerprint:
    raise ValueError(
        "workdir: its saved calibration statistics come from another run "
        f"({stats.fingerprint}); this run is ({fingerprint}). Use another "
        "--workdir or --overwrite to start again")
