"""Training: the EM loop (:func:`train`), checkpoints (:mod:`.checkpoint`)."""

from .checkpoint import load_checkpoint, load_model, read_run, save_checkpoint, validation_files
from .loop import (
    AutoEncoderStep,
    MStep,
    NonFiniteLossError,
    TrainOptions,
    TrainResult,
    default_recon_fn,
    estimate_descriptor,
    make_optimizers,
    model_inputs,
    train,
    validation_loss,
)

__all__ = [
    "AutoEncoderStep",
    "MStep",
    "NonFiniteLossError",
    "TrainOptions",
    "TrainResult",
    "default_recon_fn",
    "estimate_descriptor",
    "load_checkpoint",
    "load_model",
    "make_optimizers",
    "model_inputs",
    "read_run",
    "save_checkpoint",
    "train",
    "validation_files",
    "validation_loss",
]
