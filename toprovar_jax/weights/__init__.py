"""The weights wing: every way parameters reach the library (SPEC §1, §8).

  strict       the strict tree check every loader uses (ConversionError)
  checkpoints  orbax save / restore of parameter trees
  shards       the npz-shard export format: writer and reader
  embedded     the weights shipped inside the package (assets/)
  loading      the load-or-init policy of a run (`config.ckpt.*`)

Converters from the official checkpoints' keys live in `toprovar_jax.convert`.
See docs/ARCHITECTURE.md.
"""
