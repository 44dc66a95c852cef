"""The study: every stage tied into one resumable run with one report."""

from plankdiff.study.config import ExperimentConfig, load_experiment
from plankdiff.study.runner import Study

__all__ = ["ExperimentConfig", "Study", "load_experiment"]
