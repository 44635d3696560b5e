"""The scale loop, guidance, token strategies and static sparsity plans."""
