"""Open-set scores on synthetic Gaussian clusters: unseen clusters rejected far above chance, the
calibrated cut keeps the chosen share of held-out known images; the hold-out rule and split."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from plankdiff.data.splits import Split
from plankdiff.probe.linear import LinearClassifier, train_statistics
from plankdiff.probe.ood import (
    OOD_ARRAYS,
    KNNScorer,
    MahalanobisScorer,
    RelativeMahalanobisScorer,
    calibrate_threshold,
    energy_score,
    fit_scorer,
    held_out_classes,
    open_set_split,
    rejection_metrics,
    scorer_from_arrays,
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


def auroc(scorer, known: np.ndarray, unknown: np.ndarray) -> float:
    return rejection_metrics(scorer.score(known), scorer.score(unknown), 0.0)["auroc"]


def blank_probe(x_train: np.ndarray, n_classes: int) -> LinearClassifier:
    """The distance scores read only the probe's standardisation and class count."""
    mean, std = train_statistics(x_train, np.arange(len(x_train)))
    d = x_train.shape[1]
    return LinearClassifier(mean=mean, std=std, weight=np.zeros((n_classes, d)), bias=np.zeros(n_classes))


def test_relative_mahalanobis_rejects_unknowns_between_classes_that_nuisance_features_hide():
    """2 discriminative features (4 classes around a circle, unknowns at its centre) and 40 features
    no class differs in, whose spread varies 4-fold from image to image. The plain distance to the
    nearest class mean is dominated by the nuisance features; under one Gaussian of all training
    rows they weigh the same and cancel (Ren et al. 2021), leaving the class-specific part."""
    rng = np.random.default_rng(1)
    n, nuisance = 1000, 40
    centres = 3.0 * np.array([[1, 0], [0, 1], [-1, 0], [0, -1]])

    def draw(at: np.ndarray) -> np.ndarray:
        spread = rng.choice([1.0, 4.0], size=(len(at), 1))
        return np.hstack(
            [at + 0.5 * rng.normal(size=at.shape), spread * rng.normal(size=(len(at), nuisance))]
        )

    labels = np.repeat(np.arange(4), n)
    x_train, x_known = draw(centres[labels]), draw(centres[labels])
    x_unknown = draw(np.zeros((n, 2)))
    probe = blank_probe(x_train, 4)
    plain = fit_scorer("mahalanobis", probe, x_train, labels)
    relative = fit_scorer("relative-mahalanobis", probe, x_train, labels)
    assert isinstance(relative, RelativeMahalanobisScorer)
    assert auroc(plain, x_known, x_unknown) < 0.7  # the failure the relative score exists for
    assert auroc(relative, x_known, x_unknown) > 0.95


def test_knn_rejects_unknowns_at_the_mean_of_two_mode_classes():
    """Each known class has two modes; the unknowns sit at a class mean, between its modes: the
    nearest-class-mean distance (shared covariance, stretched along the modes) calls them the most
    typical images of all, the distance to the nearest training images sees the gap."""
    rng = np.random.default_rng(2)
    n, dim = 300, 8
    means = rng.normal(size=(3, dim)) * 3
    offsets = rng.normal(size=(3, dim)) * 3 / np.sqrt(dim) * 1.5

    def draw(sign_known: bool) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(3), n)
        sign = rng.choice([-1.0, 1.0], size=(len(labels), 1)) if sign_known else 0.0
        return means[labels] + sign * offsets[labels] + 0.3 * rng.normal(size=(len(labels), dim)), labels

    (x_train, labels), (x_known, _), (x_unknown, _) = draw(True), draw(True), draw(False)
    probe = blank_probe(x_train, 3)
    plain = fit_scorer("mahalanobis", probe, x_train, labels)
    knn = fit_scorer("knn", probe, x_train, labels, k=5)
    assert isinstance(knn, KNNScorer) and knn.k == 5
    assert auroc(plain, x_known, x_unknown) < 0.3  # worse than chance: unknowns look most typical
    assert auroc(knn, x_known, x_unknown) > 0.97


@pytest.mark.parametrize("method", ["mahalanobis", "relative-mahalanobis", "knn", "energy"])
def test_every_score_round_trips_through_its_stored_arrays(world, method):
    """What export stores (float32 `state_dict`) rebuilds the same score at predict."""
    probe, _, x_val, x_test, x_unseen = world
    x_train = np.concatenate([x_val, x_test])
    labels = probe.predict(x_train) if hasattr(probe, "predict") else probe.logits(x_train).argmax(1)
    scorer = fit_scorer(method, probe, x_train, labels, k=3)
    arrays = {k: v.astype(np.float32) for k, v in scorer.state_dict().items()}
    assert set(arrays) == set(OOD_ARRAYS[method])
    again = scorer_from_arrays(method, probe, arrays, k=3)
    np.testing.assert_allclose(again.score(x_unseen[:50]), scorer.score(x_unseen[:50]), rtol=2e-3, atol=1e-3)
    # Every score ranks the unseen clusters above the known ones in this easy world.
    assert auroc(scorer, x_val[:300], x_unseen) > 0.7
    if OOD_ARRAYS[method]:
        with pytest.raises(ValueError, match=OOD_ARRAYS[method][-1]):
            scorer_from_arrays(
                method, probe, {k: v for k, v in arrays.items() if k != OOD_ARRAYS[method][-1]}
            )


def test_knn_score_is_the_distance_to_the_kth_nearest_unit_row(world):
    probe, _, x_val, x_test, _ = world
    scorer = KNNScorer.for_classifier(probe, x_val, k=4)
    unit = lambda v: (z := (v - probe.mean) / probe.std) / np.linalg.norm(z, axis=1, keepdims=True)  # noqa: E731
    distances = np.linalg.norm(unit(x_test[:7])[:, None] - unit(x_val)[None], axis=2)
    np.testing.assert_allclose(scorer.score(x_test[:7]), np.sort(distances, axis=1)[:, 3], rtol=1e-4)
    with pytest.raises(ValueError, match="k = 0"):
        KNNScorer(mean=probe.mean, std=probe.std, bank=scorer.bank, k=0)


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
