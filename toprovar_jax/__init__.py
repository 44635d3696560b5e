"""toprovar_jax: next-scale image generators (VAR, Infinity) in JAX/Flax with
ToProVAR attention-entropy guided sparsity (scale / layer / token)."""

__version__ = "0.1.0"
