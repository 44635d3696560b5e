"""Pure linen modules: transformers (VAR / Infinity style) and tokenizers."""
