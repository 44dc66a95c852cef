"""Counting under shift as the study's quantification stage scores it, on synthetic posteriors whose
true class mix per day is known."""

from __future__ import annotations

import numpy as np
import pytest

from plankdiff.deploy.quantify import MEDIAN, POOLED
from plankdiff.evaluation.quantification import count_scores

MEANS = np.array([[0.0, 0.0], [1.5, 0.0], [0.0, 1.5], [1.5, 1.5]])  # overlapping classes: CC errs


def posteriors(prior: np.ndarray, n: int, rng: np.random.Generator, *, sharpen: float) -> tuple:
    """Over-confident posteriors (Bayes posteriors under a uniform prior, raised to `sharpen`, as an
    over-trained probe gives them) and their labels."""
    labels = rng.choice(len(prior), size=n, p=prior)
    x = MEANS[labels] + rng.normal(size=(n, 2))
    log_lik = -0.5 * sharpen * ((x[:, None, :] - MEANS[None]) ** 2).sum(axis=2)
    proba = np.exp(log_lik - log_lik.max(axis=1, keepdims=True))
    return proba / proba.sum(axis=1, keepdims=True), labels


@pytest.fixture(scope="module")
def shifted():
    """Validation at the training mix (uniform); three target days whose mixes move far from it,
    and a fourth day of five images."""
    rng = np.random.default_rng(1)
    val = posteriors(np.full(4, 0.25), 3000, rng, sharpen=3.0)
    priors = [[0.7, 0.2, 0.05, 0.05], [0.05, 0.05, 0.2, 0.7], [0.1, 0.6, 0.2, 0.1], [0.25] * 4]
    sizes = [1500, 1500, 1500, 5]
    days = [posteriors(np.array(p), n, rng, sharpen=3.0) for p, n in zip(priors, sizes, strict=True)]
    samples = np.repeat(["2020-03-01", "2020-03-02", "2020-03-03", "2020-03-04"], sizes)
    proba = np.concatenate([d[0] for d in days])
    labels = np.concatenate([d[1] for d in days])
    return val, proba, labels, samples


def test_under_prior_shift_cc_is_biased_and_pacc_and_emq_recover_the_day_mixes(shifted):
    (val_proba, val_labels), proba, labels, samples = shifted
    calibration, table = count_scores(val_proba, val_labels, proba, labels, samples, min_images=20)
    scores = table.set_index(["counting", "sample"])
    for day in ("2020-03-01", "2020-03-02", "2020-03-03"):
        cc = scores.loc[("cc", day), "mae"]
        assert cc > 0.05, day  # plain counting follows the training mix, not the day's
        for method in ("pacc", "emq"):
            assert scores.loc[(method, day), "mae"] < cc / 2, (method, day)
            assert scores.loc[(method, day), "bray_curtis"] < scores.loc[("cc", day), "bray_curtis"]
    for method in ("pacc", "emq"):
        assert scores.loc[(method, MEDIAN), "mae"] < 0.03
        assert scores.loc[(method, MEDIAN), "bray_curtis"] < scores.loc[("cc", MEDIAN), "bray_curtis"] / 2
    # Temperature scaling undoes the sharpening (T near 3) and lowers the calibration error.
    assert 2.0 < calibration["temperature"] < 4.5
    assert calibration["ece_val_after"] < calibration["ece_val_before"] / 2
    assert calibration["ece_target_after"] < calibration["ece_target_before"]


def test_days_are_scored_apart_and_a_small_day_is_left_out_of_the_median(shifted):
    (val_proba, val_labels), proba, labels, samples = shifted
    other = ["2020-03-01"] * 7 + ["2020-03-04"] * 2 + ["2020-03-09"] * 3  # the 9th: other classes only
    calibration, table = count_scores(
        val_proba, val_labels, proba, labels, samples, other_samples=other, min_images=20
    )
    emq = table[table["counting"] == "emq"].set_index("sample")
    assert list(emq.index) == ["2020-03-01", "2020-03-02", "2020-03-03", "2020-03-04", POOLED, MEDIAN]
    assert emq.loc["2020-03-04", "n"] == 5 and emq.loc[POOLED, "n"] == 4505
    assert emq.loc[MEDIAN, "n"] == 4500  # the day of five images is not in the median
    assert emq.loc[MEDIAN, "mae"] == pytest.approx(
        np.median(emq.loc[["2020-03-01", "2020-03-02", "2020-03-03"], "mae"])
    )
    assert emq["n_other"].to_dict() == {
        "2020-03-01": 7,
        "2020-03-02": 0,
        "2020-03-03": 0,
        "2020-03-04": 2,
        POOLED: 12,
        MEDIAN: 7,
    }
    assert calibration["samples_of_other_classes_only"] == ["2020-03-09"]
    assert emq["in_median"].to_dict() == {
        "2020-03-01": True,
        "2020-03-02": True,
        "2020-03-03": True,
        "2020-03-04": False,
        POOLED: False,
        MEDIAN: False,
    }
    # Each day's truth is its own: pooling the days gives another mix than any of them.
    pooled = np.bincount(labels, minlength=4) / len(labels)
    first = np.bincount(labels[samples == "2020-03-01"], minlength=4) / (samples == "2020-03-01").sum()
    assert np.abs(pooled - first).max() > 0.2


def test_a_median_over_no_day_of_enough_images_is_nan_not_zero(shifted):
    (val_proba, val_labels), proba, labels, samples = shifted
    _, table = count_scores(val_proba, val_labels, proba[:30], labels[:30], samples[:30], min_images=100)
    median = table[table["sample"] == MEDIAN]
    assert median["bray_curtis"].isna().all() and (median["n"] == 0).all()
