"""Text encoders: all-MiniLM-L6-v2 (`minilm` model, `minilm_loader` I/O)."""
