"""Pure-PyTorch references: readable, differentiable, and the `torch` backend."""
