"""AUPRO's regions come from scipy.ndimage.label: the same labels, numbered the same way, as
the hand-written torch labelling it replaced and as skimage.measure.label, and the same AUPRO."""

import numpy as np
import pytest
import torch
from _torch_components import label_components as torch_label_components

from igd_fast.metrics import aupro, label_components, localisation

measure = pytest.importorskip("skimage.measure")

CASES = [(seed, n, h, w, p) for seed, (n, h, w, p) in enumerate(
    [(1, 1, 1, 0.5), (3, 40, 40, 0.3), (2, 64, 17, 0.55), (1, 96, 128, 0.45), (4, 33, 71, 0.7), (2, 50, 50, 0.05)])]


@pytest.mark.parametrize("seed,n,h,w,p", CASES)
def test_labels_equal_the_old_torch_labelling_and_skimage(seed, n, h, w, p):
    masks = np.random.default_rng(seed).random((n, h, w)) < p
    got, count = label_components(torch.from_numpy(masks))
    old, old_count = torch_label_components(torch.from_numpy(masks))
    assert count == old_count and torch.equal(got, old)  # identical numbers, not only the same partition
    offset = 0
    for i in range(n):  # skimage numbers each image from 1 in raster order, as we do after the offset
        sk = measure.label(masks[i], connectivity=2)
        assert np.array_equal(np.where(sk > 0, sk + offset, 0), got[i].numpy())
        offset += int(sk.max())
    assert offset == count


def test_aupro_equals_the_old_labelling(monkeypatch):
    rng = np.random.default_rng(7)
    masks = np.zeros((4, 64, 80), bool)
    for k in range(4):  # blobs and specks of several sizes
        for _ in range(6):
            y, x, r = rng.integers(0, 64), rng.integers(0, 80), rng.integers(1, 9)
            masks[k, max(0, y - r) : y + r, max(0, x - r) : x + r] = True
    maps = rng.random(masks.shape) + 0.6 * masks
    new = aupro(maps, masks)
    monkeypatch.setattr(localisation, "label_components", torch_label_components)
    assert aupro(maps, masks) == new
    assert 0.0 < new < 1.0


def test_an_empty_and_a_full_mask():
    labels, count = label_components(torch.zeros(2, 5, 6, dtype=torch.bool))
    assert count == 0 and not labels.any()
    labels, count = label_components(torch.ones(5, 6, dtype=torch.bool))
    assert count == 1 and labels.shape == (5, 6) and (labels == 1).all()
