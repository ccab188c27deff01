"""Triton kernels (the ``triton`` backend). Run on CUDA tensors, or on the CPU under
``TRITON_INTERPRET=1`` (slow: keep shapes small).

Lives in the repository's top-level ``kernels/`` folder (beside ``csrc/``) and installs
as ``igd_fast.kernels`` (``package_dir`` in setup.py)."""
