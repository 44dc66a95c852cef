"""Weighted k-NN: checked against a brute-force numpy transcription of DINO's rule."""

from __future__ import annotations

import numpy as np
import pytest

from plankdiff.probe.knn import knn_predict


def brute_force(train_x, train_y, query_x, n_classes, k, temperature):
    """Every query against every training row, in float64, one query at a time."""
    mean, std = train_x.mean(axis=0), np.maximum(train_x.std(axis=0), 1e-6)

    def unit(x):
        z = (x - mean) / std
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    bank, queries = unit(train_x.astype(np.float64)), unit(query_x.astype(np.float64))
    out = np.zeros((len(query_x), n_classes))
    for i, q in enumerate(queries):
        sim = bank @ q
        nearest = np.argsort(-sim)[:k]
        for j in nearest:
            out[i, train_y[j]] += np.exp(sim[j] / temperature)
    return out / out.sum(axis=1, keepdims=True)


@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    n_classes = 5
    train_y = rng.integers(0, n_classes, 200)
    centres = rng.normal(0, 1.0, (n_classes, 16))
    train_x = (centres[train_y] + rng.normal(size=(200, 16)) + 4).astype(np.float32)
    query_y = rng.integers(0, n_classes, 53)
    query_x = (centres[query_y] + rng.normal(size=(53, 16)) + 4).astype(np.float32)
    return train_x, train_y, query_x, query_y, n_classes


def test_matches_brute_force_across_chunks(small):
    train_x, train_y, query_x, _, n_classes = small
    expected = brute_force(train_x, train_y, query_x, n_classes, k=7, temperature=0.1)
    got = knn_predict(train_x, train_y, query_x, n_classes, k=7, temperature=0.1, chunk_size=16)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_defaults_follow_dino_and_classify_clusters(small):
    train_x, train_y, query_x, query_y, n_classes = small
    probs = knn_predict(train_x, train_y, query_x, n_classes)
    np.testing.assert_allclose(probs, brute_force(train_x, train_y, query_x, n_classes, 20, 0.07), rtol=1e-4)
    assert (probs.argmax(axis=1) == query_y).mean() > 0.8
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_k_beyond_the_training_set_uses_all_of_it(small):
    train_x, train_y, query_x, _, n_classes = small
    capped = knn_predict(train_x, train_y, query_x, n_classes, k=10_000)
    np.testing.assert_allclose(capped, knn_predict(train_x, train_y, query_x, n_classes, k=len(train_x)))


def test_standardisation_comes_from_the_training_bank(small):
    """Shifting the queries must move them relative to the bank: stats are the bank's, not the queries'."""
    train_x, train_y, query_x, _, n_classes = small
    moved = knn_predict(train_x, train_y, query_x + 3, n_classes)
    assert not np.allclose(moved, knn_predict(train_x, train_y, query_x, n_classes))
