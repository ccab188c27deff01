"""The Gaussian AD head against scikit-learn's LedoitWolf on random features."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.covariance import LedoitWolf

from igd_fast.models.gaussian import GaussianHead, feature_bank, ledoit_wolf


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 80), d=st.integers(1, 24), seed=st.integers(0, 2**16), scale=st.floats(1e-3, 1e3))
def test_ledoit_wolf_equals_sklearn(n, d, seed, scale):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * scale + rng.standard_normal(d)
    mean, cov, shrinkage = ledoit_wolf(torch.from_numpy(x))
    lw = LedoitWolf().fit(x)
    np.testing.assert_allclose(mean.numpy(), lw.location_, rtol=1e-10, atol=1e-10 * scale)
    np.testing.assert_allclose(cov.numpy(), lw.covariance_, rtol=1e-8, atol=1e-10 * scale**2)
    assert shrinkage == pytest.approx(lw.shrinkage_, rel=1e-8, abs=1e-12)


def test_head_maps_equal_sklearn_mahalanobis():
    g = torch.Generator().manual_seed(0)
    levels = [torch.randn(3, 8, 6, 5, generator=g) * 2 + 1, torch.randn(3, 16, 3, 4, generator=g)]
    banks = [f.movedim(1, -1).reshape(-1, f.shape[1]) for f in levels]
    head = GaussianHead.fit(banks)
    test = [torch.randn(2, f.shape[1], 7, 3, generator=g) for f in levels]
    for bank, f, m in zip(banks, test, head(test)):
        lw = LedoitWolf().fit(bank.double().numpy())
        rows = f.movedim(1, -1).reshape(-1, f.shape[1]).double().numpy()
        want = np.sqrt(lw.mahalanobis(rows)).reshape(2, 7, 3)
        assert m.shape == (2, 1, 7, 3)
        np.testing.assert_allclose(m[:, 0].numpy(), want, rtol=2e-4, atol=2e-4)


def test_feature_bank_draws_rows_of_each_image():
    f = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    bank = feature_bank(f, 7, torch.Generator().manual_seed(1))
    assert bank.shape == (14, 3)
    rows = {tuple(r.tolist()) for r in f.movedim(1, -1).reshape(-1, 3)}
    assert all(tuple(r.tolist()) in rows for r in bank)
    assert len({tuple(r.tolist()) for r in bank}) == 14  # no position twice


def test_ledoit_wolf_refuses_one_row():
    with pytest.raises(ValueError, match="n >= 2"):
        ledoit_wolf(torch.ones(1, 3))
