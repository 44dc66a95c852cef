"""k-means on frozen features with K = number of classes: how well the features group by class
without any label. Scores: NMI, ARI, Hungarian-matched accuracy (best one-to-one cluster→class
assignment) and purity (each cluster votes for its majority class)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

if TYPE_CHECKING:
    from plankdiff.features.store import FeatureStore


def cluster_scores(labels: np.ndarray, clusters: np.ndarray) -> dict[str, float]:
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    classes, label_idx = np.unique(labels, return_inverse=True)
    groups, cluster_idx = np.unique(clusters, return_inverse=True)
    table = np.zeros((len(groups), len(classes)), dtype=np.int64)
    np.add.at(table, (cluster_idx, label_idx), 1)
    rows, cols = linear_sum_assignment(-table)
    return {
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
        "hungarian_accuracy": float(table[rows, cols].sum() / len(labels)),
        "purity": float(table.max(axis=1).sum() / len(labels)),
    }


def kmeans_scores(
    features: np.ndarray, labels: np.ndarray, *, n_clusters: int | None = None, seed: int = 0, n_init: int = 3
) -> dict[str, float]:
    """Standardise, L2-normalise (cosine geometry, as for the k-NN probe), cluster, score."""
    x = np.asarray(features, dtype=np.float32)
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = n_clusters or len(np.unique(labels))
    clusters = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x)
    return cluster_scores(labels, clusters) | {"k": k}


def pair_kmeans_scores(
    store: FeatureStore, pair: str, rows: np.ndarray, labels: np.ndarray, *, seed: int = 0
) -> dict[str, float]:
    """`kmeans_scores` of one pair's features of the dataset rows `rows` (labels: theirs)."""
    x = np.asarray(store.load(pair)[store.positions(rows)], np.float32)
    return kmeans_scores(x, labels, seed=seed)
