"""Compiled inference networks: ``torch.compile`` (inductor) of a model's encoder and
decoder with frozen weights, for scoring only (no gradients, weights never change)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def compile_networks(model: nn.Module) -> nn.Module:
    """A shallow copy of an IGD model whose encoder and decoder are compiled by inductor
    with freezing (weights folded into the graph as constants: BatchNorm, casts and
    layout changes are done once at compile time). Compiles on the first call of each
    input shape; the descriptor and the loss kernels are untouched."""
    import torch._inductor.config as inductor_config

    # freezing is a global inductor switch, read when a graph compiles: scoring-only process state
    inductor_config.freezing = True
    out = copy.copy(model)
    out._modules = dict(model._modules)
    out.encoder = torch.compile(model.encoder, dynamic=False)
    if getattr(model, "decoder", None) is not None:
        out.decoder = torch.compile(model.decoder, dynamic=False)
    return out
