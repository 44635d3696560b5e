"""Pure-numpy converters from official PyTorch state_dicts to our params."""
