"""Deployment: export a trained probe with its backbone as one checked folder, and classify new images."""

from plankdiff.deploy.calibrate import Abstention, calibrate_thresholds, decide
from plankdiff.deploy.export import (
    DeployedClassifier,
    ModelCardError,
    export_classifier,
    export_from_store,
    load_classifier,
)
from plankdiff.deploy.predict import PredictionRun, predict
from plankdiff.deploy.score import score_predictions

__all__ = [
    "Abstention",
    "DeployedClassifier",
    "ModelCardError",
    "PredictionRun",
    "calibrate_thresholds",
    "decide",
    "export_classifier",
    "export_from_store",
    "load_classifier",
    "predict",
    "score_predictions",
]
