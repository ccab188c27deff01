"""Training: the EM loop (:func:`train`), its M-step (:mod:`.mstep`), E-step and
validation (:mod:`.estep`), run setup (:mod:`.setup`); checkpoints are re-exported
from :mod:`igd_fast.checkpoint`."""

from ..checkpoint import load_checkpoint, load_model, read_run, save_checkpoint, validation_files
from .estep import calibrate_batchnorm, estimate_descriptor, model_inputs, validation_loss
from .loop import NonFiniteLossError, TrainingInterrupted, TrainResult, sigterm_as_interrupt, train
from .mstep import AutoEncoderStep, MStep, default_recon_fn, make_optimizers
from .setup import TrainOptions, auto_micro_batch

__all__ = [
    "AutoEncoderStep",
    "MStep",
    "NonFiniteLossError",
    "TrainOptions",
    "TrainResult",
    "TrainingInterrupted",
    "auto_micro_batch",
    "calibrate_batchnorm",
    "default_recon_fn",
    "estimate_descriptor",
    "load_checkpoint",
    "load_model",
    "make_optimizers",
    "model_inputs",
    "read_run",
    "save_checkpoint",
    "sigterm_as_interrupt",
    "train",
    "validation_files",
    "validation_loss",
]
