"""Deployment: export a trained probe with its backbone as one checked folder, and classify new images."""

from plankdiff._lazy import lazy_exports

_EXPORTS = {
    "Abstention": "calibrate",
    "DeployedClassifier": "export",
    "ModelCardError": "export",
    "PredictionRun": "predict",
    "calibrate_thresholds": "calibrate",
    "decide": "calibrate",
    "export_classifier": "export",
    "export_from_store": "export",
    "load_classifier": "export",
    "predict": "predict",
    "score_predictions": "score",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
