"""Weighted k-nearest-neighbour classification on cosine similarity, as in DINO's evaluation.

A second, parameter-free read of the same features: no training, so it shows whether classes
already sit together in the representation, independently of how well a linear probe was tuned.
Each query takes its k most similar training examples, weights them by exp(similarity / T), and
sums the weights per class (Caron et al. 2021, `eval_knn.py`: k=20, T=0.07).
"""

from __future__ import annotations

import numpy as np
import torch

from plankdiff.probe.linear import train_statistics

DEFAULT_K = 20
DEFAULT_TEMPERATURE = 0.07
QUERY_CHUNK = 1024  # queries at a time: the similarity block is chunk × N_train floats (~90 MB at 21k)


def unit_rows(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """Standardise with the train statistics, then scale every row to unit length (cosine = dot product)."""
    z = torch.from_numpy((x.astype(np.float32) - mean) / std)
    return torch.nn.functional.normalize(z, dim=1)


def knn_predict(
    train_x: np.ndarray,
    train_y: np.ndarray,
    query_x: np.ndarray,
    n_classes: int,
    *,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    chunk_size: int = QUERY_CHUNK,
) -> np.ndarray:
    """Class probabilities [N_query, n_classes]: each query's neighbour votes, normalised to sum to 1.

    Features are standardised with `train_x`'s statistics (so no dimension dominates the angle just
    by its scale) and L2-normalised. Queries are scored `chunk_size` at a time so memory stays at
    chunk_size × N_train whatever the query count. k is capped at the training-set size.
    """
    train_y = np.asarray(train_y)
    if not (train_x.ndim == 2 and query_x.ndim == 2 and train_x.shape[1] == query_x.shape[1]):
        raise ValueError(
            f"train {train_x.shape} and query {query_x.shape} features must be 2-D with equal widths"
        )
    if len(train_y) != len(train_x):
        raise ValueError(f"{len(train_y)} labels for {len(train_x)} training rows")
    if not (train_y.min() >= 0 and train_y.max() < n_classes):
        raise ValueError(f"train labels outside range({n_classes})")
    if not (temperature > 0 and k > 0):
        raise ValueError("k and temperature must be positive")
    k = min(k, len(train_x))
    mean, std = train_statistics(train_x, np.arange(len(train_x)))
    bank = unit_rows(train_x, mean, std)
    bank_y = torch.from_numpy(train_y.astype(np.int64))
    probs = np.empty((len(query_x), n_classes), dtype=np.float32)
    for start in range(0, len(query_x), chunk_size):
        queries = unit_rows(query_x[start : start + chunk_size], mean, std)
        sim, nearest = (queries @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(queries), n_classes)
        votes.scatter_add_(1, bank_y[nearest], (sim / temperature).exp())
        probs[start : start + len(queries)] = (votes / votes.sum(dim=1, keepdim=True)).numpy()
    return probs
