"""Text encoders: all-MiniLM-L6-v2 (`minilm` model, `minilm_loader` I/O) for
the emoji model, and the Flan-T5 encoder (`t5` model, `t5_convert` weights)
for Infinity."""
