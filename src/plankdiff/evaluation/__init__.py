"""Evaluation stage: clustering of frozen features, distribution shift, label efficiency."""

from plankdiff.evaluation.clustering import cluster_scores, kmeans_scores

__all__ = ["cluster_scores", "kmeans_scores"]
