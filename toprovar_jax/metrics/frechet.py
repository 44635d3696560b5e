"""Fréchet distance between two sets of feature vectors (host numpy).

The Fréchet (2-Wasserstein) distance between the Gaussians fitted to two
feature sets, as FID computes it on Inception features:

  d² = |μ_a − μ_b|² + tr Σ_a + tr Σ_b − 2 tr (Σ_a Σ_b)^{1/2}

Here it is computed without a matrix square root. For any factors with
Σ_a = F_a F_aᵀ and Σ_b = F_b F_bᵀ, the non-zero eigenvalues of
Σ_a Σ_b = F_a F_aᵀ F_b F_bᵀ are those of (F_aᵀF_b)(F_aᵀF_b)ᵀ, hence

  tr (Σ_a Σ_b)^{1/2} = Σ_i sqrt(λ_i((F_aᵀF_b)(F_aᵀF_b)ᵀ)) = ‖F_aᵀF_b‖_*

the nuclear norm (sum of singular values) of F_aᵀF_b. With the centred,
scaled samples A = (X_a − μ_a)ᵀ / √(N_a − 1) (D × N_a), Σ_a = A Aᵀ, and the
thin QR Aᵀ = Q R gives the compact factor F_a = Rᵀ (D × min(N_a, D)), so
F_aᵀF_b is at most min(N, D) square whatever N is. It is exact, needs no
scipy, and stays real and non-negative when N ≪ D (singular covariances),
the usual case in this project.

Small-sample caveat: the plug-in estimate is biased (upward, by O(tr Σ / N))
and its covariances have rank ≤ N − 1, so a value is only comparable with
values of the same feature extractor on the same number of images; it is
never comparable with a published FID.

  fit_gaussian          (mean, covariance) of a feature set
  frechet_distance      d² of two feature sets (the nuclear-norm form)

Dimension letters: N samples, D feature width.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


def fit_gaussian(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """(D,) mean and (D, D) unbiased covariance (N − 1) of (N, D) features."""
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or len(x) < 2:
    raise ValueError(f"features: expected (N, D) with N >= 2, got {x.shape}")
  return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(features_a: np.ndarray,
                     features_b: np.ndarray) -> Optional[float]:
  """Fréchet distance d² of the Gaussians fitted to two feature sets.

  Args:
    features_a: (N_a, D) feature vectors.
    features_b: (N_b, D) feature vectors of the same width.

  Returns:
    d² >= 0 as a float (float64 arithmetic; rounding below 0 is clamped),
    or None when a set has fewer than 2 samples (no covariance).

  Raises:
    ValueError: not 2-D or the widths differ.
  """
  a = np.asarray(features_a, np.float64)
  b = np.asarray(features_b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f"features: expected (N, D) sets of one width, got "
                     f"{a.shape} and {b.shape}")
  if len(a) < 2 or len(b) < 2:
    return None
  mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
  # R of the thin QR of the centred, scaled samples (N, D): Σ = Rᵀ R.
  ra = np.linalg.qr((a - mu_a) / np.sqrt(len(a) - 1), mode="r")
  rb = np.linalg.qr((b - mu_b) / np.sqrt(len(b) - 1), mode="r")
  # tr Σ = ‖R‖_F²; tr (Σ_a Σ_b)^{1/2} = ‖R_a R_bᵀ‖_*.
  cross = np.linalg.svd(ra @ rb.T, compute_uv=False).sum()
  d2 = (np.sum(np.square(mu_a - mu_b)) + np.sum(np.square(ra))
        + np.sum(np.square(rb)) - 2.0 * cross)
  return float(max(d2, 0.0))
