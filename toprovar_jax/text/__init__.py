"""Text encoders: all-MiniLM-L6-v2 (`minilm` model, `minilm_loader` I/O) for
the emoji model, and the Flan-T5 encoder (`t5` model; its weights converter
is `toprovar_jax.convert.t5`) for Infinity; `features` turns prompts into
the padded features a model reads."""
