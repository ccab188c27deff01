"""The ops layer: one torch.library op per kernel, dispatched to a backend."""
