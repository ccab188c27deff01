"""Triton kernels (the ``triton`` backend). Run on CUDA tensors, or on the CPU under
``TRITON_INTERPRET=1`` (slow: keep shapes small)."""
