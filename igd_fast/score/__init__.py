"""Scoring with a trained model directory, along the data flow: the recipe (which scoring),
the scoring module (components -> terms -> maps -> image score), the calibrator (its
statistics and the decision state, on validation normals), the post-processor (pred_score,
pred_label, pred_mask), the runner (files, folders, in-memory batches) and the Scorer facade."""

from .calibrate import Calibrator
from .components import COMPONENTS, Component, Terms
from .io import list_images, overlay, save_overlay
from .module import BatchScores, ScoringModule
from .postprocess import PostProcessor
from .recipe import OPTIONS, Option, Recipe, RecipeError
from .results import Failure, Prediction, ScoredImage
from .runner import Runner
from .scorer import Scorer
from .threshold import DEFAULT_ALPHA, THRESHOLD_JSON, conformal_threshold

__all__ = [
    "COMPONENTS",
    "DEFAULT_ALPHA",
    "OPTIONS",
    "THRESHOLD_JSON",
    "BatchScores",
    "Calibrator",
    "Component",
    "Failure",
    "Option",
    "PostProcessor",
    "Prediction",
    "Recipe",
    "RecipeError",
    "Runner",
    "ScoredImage",
    "Scorer",
    "ScoringModule",
    "Terms",
    "conformal_threshold",
    "list_images",
    "overlay",
    "save_overlay",
]
