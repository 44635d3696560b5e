"""Evaluation applications: generate with a model, then judge the outputs.

  emoji   the quality evidence of the embedded emoji model (SPEC §8)

They run the sampler through `sampling.runner` and score with
`toprovar_jax.metrics`, which never runs a model itself.
"""
