import os

import pytest
import torch

# Triton kernels run interpreted on CPU-only machines; must be set before triton loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    """One tiny trained global + local pair on synthetic data for the tests that only read it
    (copy the model directory before writing into it)."""
    from _cli import tiny_trained

    return tiny_trained(tmp_path_factory.mktemp("igd_tiny_pair"), "synth", n_train=12, seed=4)
