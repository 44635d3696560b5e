"""Numerical kernels: PyTorch-exact resampling, attention (with entropy)."""
