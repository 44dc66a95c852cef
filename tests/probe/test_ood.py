"""Open-set scores on synthetic Gaussian clusters: unseen clusters rejected far above chance, the
calibrated cut keeps the chosen share of held-out known images; the hold-out rule and split."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from plankdiff.data.splits import Split
from plankdiff.probe.linear import LinearClassifier, train_statistics
from plankdiff.probe.ood import (
    MahalanobisScorer,
    calibrate_threshold,
    energy_score,
    held_out_classes,
    open_set_split,
    rejection_metrics,
)

DIM, KNOWN, UNSEEN = 24, 6, 3


def clusters(n_per: int, centres: np.ndarray, rng: np.random.Generator, scale: np.ndarray):
    x = np.concatenate([c + rng.normal(size=(n_per, DIM)) * scale for c in centres])
    return x.astype(np.float32), np.repeat(np.arange(len(centres)), n_per)


@pytest.fixture(scope="module")
def world():
    """6 known and 3 unseen Gaussian clusters in 24-D, with unequal feature scales (so the
    standardisation matters), a probe on the known ones, and its Mahalanobis scorer."""
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.5, 3.0, DIM)
    centres = rng.normal(size=(KNOWN + UNSEEN, DIM)) * 2.5 * scale
    x_train, y_train = clusters(200, centres[:KNOWN], rng, scale)
    x_val, _ = clusters(200, centres[:KNOWN], rng, scale)
    x_test, _ = clusters(400, centres[:KNOWN], rng, scale)
    x_unseen, _ = clusters(300, centres[KNOWN:], rng, scale)
    mean, std = train_statistics(x_train, np.arange(len(x_train)))
    model = LogisticRegression(max_iter=2000).fit((x_train - mean) / std, y_train)
    probe = LinearClassifier(mean=mean, std=std, weight=model.coef_, bias=model.intercept_)
    scorer = MahalanobisScorer.for_classifier(probe, x_train, y_train)
    return probe, scorer, x_val, x_test, x_unseen


def test_unseen_clusters_are_rejected_and_the_cut_keeps_the_chosen_share(world):
    probe, scorer, x_val, x_test, x_unseen = world
    threshold = calibrate_threshold(scorer.score(x_val), keep=0.95)
    metrics = rejection_metrics(scorer.score(x_test), scorer.score(x_unseen), threshold)
    assert metrics["auroc"] > 0.98  # chance is 0.5
    assert metrics["unknown_rejected"] > 0.9  # chance at this cut is 0.05
    assert abs(metrics["known_kept"] - 0.95) < 0.025  # held-out known images, not the calibration ones
    assert metrics["n_known"] == len(x_test) and metrics["n_unknown"] == len(x_unseen)
    # Another share, another cut: the same calibration property.
    tight = calibrate_threshold(scorer.score(x_val), keep=0.8)
    assert (
        abs(rejection_metrics(scorer.score(x_test), scorer.score(x_unseen), tight)["known_kept"] - 0.8) < 0.04
    )


def test_energy_of_the_probe_logits_separates_above_chance(world):
    probe, _, x_val, x_test, x_unseen = world
    known, unseen = energy_score(probe.logits(x_test)), energy_score(probe.logits(x_unseen))
    metrics = rejection_metrics(known, unseen, calibrate_threshold(energy_score(probe.logits(x_val))))
    assert metrics["auroc"] > 0.7


def test_mahalanobis_matches_the_direct_formula_and_round_trips(world):
    probe, scorer, x_val, *_ = world
    z = (x_val[:5].astype(np.float64) - probe.mean) / probe.std
    direct = [min((v - m) @ scorer.precision @ (v - m) for m in scorer.means) for v in z]
    np.testing.assert_allclose(scorer.score(x_val[:5]), direct, rtol=1e-6)
    again = MahalanobisScorer.from_arrays(mean=probe.mean, std=probe.std, **scorer.state_dict())
    np.testing.assert_allclose(again.score(x_val[:50]), scorer.score(x_val[:50]), rtol=1e-3)


def test_energy_is_lower_for_a_confident_logit():
    logits = np.array([[10.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    energy = energy_score(logits)
    assert energy[0] < energy[1]
    np.testing.assert_allclose(energy[1], -(1 + np.log(3)))
    with pytest.raises(ValueError, match="temperature"):
        energy_score(logits, temperature=0)


def test_calibration_edges():
    assert calibrate_threshold(np.arange(100.0), keep=1.0) == 99.0
    with pytest.raises(ValueError, match="share"):
        calibrate_threshold(np.arange(10.0), keep=0)
    with pytest.raises(ValueError, match="no validation scores"):
        calibrate_threshold(np.array([]))


def test_held_out_classes_are_a_fixed_fifth_chosen_by_name():
    names = [f"class_{i:03d}" for i in range(121)]
    shuffled = list(np.random.default_rng(3).permutation(names))
    held = held_out_classes(shuffled)
    assert held == held_out_classes(names) == sorted(names)[::5]
    assert len(held) == 25
    with pytest.raises(ValueError, match="n >= 2"):
        held_out_classes(names, every=1)


def test_open_set_split_removes_the_held_out_classes_and_returns_their_test_rows():
    classes = ["a", "b", "c", "d"]
    targets = np.array([0, 1, 2, 3] * 5 + [-1])
    rows = {"train": np.arange(0, 8), "val": np.arange(8, 12), "test": np.arange(12, 21)}
    split = Split(name="s", rows=rows, targets=targets, classes=classes)
    known, unknown_rows = open_set_split(split, ["b", "d"])
    assert known.classes == ["a", "c"]
    assert set(unknown_rows) == {13, 15, 17, 19}  # test rows of b and d; row 20 had no target
    for part in ("train", "val", "test"):
        assert set(known.labels(part)) <= {0, 1}
        assert all(classes[targets[r]] in ("a", "c") for r in known.indices(part))
    assert [classes[targets[r]] for r in known.indices("test")] == ["a", "c"] * 2
    with pytest.raises(ValueError, match="not in split"):
        open_set_split(split, ["zebra"])
