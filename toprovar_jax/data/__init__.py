"""Training data for the embedded default model (SPEC §8)."""
