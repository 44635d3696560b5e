"""Training of the embedded emoji model (SPEC §8): tokenizer, then transformer.

  data          model pair of a variant, dataset split, per-step batches
  loop          the resumable, time-budgeted loop, optimiser, export
  tokenizer     BSQ VAE step (multi-scale straight-through BSQ), evaluation
  transformer   the next-scale transformer step (per-bit loss, BSC)
  curves        metrics.jsonl -> curves.json / curves.png
  budget        steps that fit the time left of a command
"""
