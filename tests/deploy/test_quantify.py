"""Counting under prior shift on synthetic posteriors, where the true prevalences are known."""

from __future__ import annotations

import numpy as np
import pytest

from plankdiff.deploy.quantify import (
    MIX_REFERENCE,
    bootstrap_prevalence,
    fit_quantifier,
    mix_reference,
    quantification_table,
)

MEANS = np.array([[0.0, 0.0], [1.5, 0.0], [0.0, 1.5], [1.5, 1.5]])  # overlapping classes: CC errs


def draw(prior: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Bayes posteriors under a uniform training prior (what a calibrated probe would give), and labels."""
    labels = rng.choice(len(prior), size=n, p=prior)
    x = MEANS[labels] + rng.normal(size=(n, 2))
    log_lik = -0.5 * ((x[:, None, :] - MEANS[None]) ** 2).sum(axis=2)
    proba = np.exp(log_lik - log_lik.max(axis=1, keepdims=True))
    return proba / proba.sum(axis=1, keepdims=True), labels


@pytest.fixture(scope="module")
def shifted():
    rng = np.random.default_rng(0)
    val = draw(np.full(4, 0.25), 4000, rng)
    priors = [np.array([0.7, 0.2, 0.05, 0.05]), np.array([0.05, 0.05, 0.2, 0.7])]
    tests = [draw(p, 2000, rng) for p in priors]
    proba = np.concatenate([t[0] for t in tests])
    labels = np.concatenate([t[1] for t in tests])
    samples = np.repeat(["day1", "day2"], 2000)
    return val, proba, labels, samples


def test_pacc_and_emq_beat_classify_and_count_under_prior_shift(shifted):
    (val_proba, val_labels), proba, labels, samples = shifted
    table = quantification_table(val_proba, val_labels, proba, labels, samples).set_index(
        ["method", "sample"]
    )
    assert set(table.index.get_level_values("sample")) == {
        "day1",
        "day2",
        "(pooled)",
        "(median over samples)",
    }
    for sample in ("day1", "day2"):
        cc = table.loc[("cc", sample), "mae"]
        assert cc > 0.05  # the shift really hurts plain counting here
        for method in ("pacc", "emq"):
            assert table.loc[(method, sample), "mae"] < cc / 2, (method, sample)
            assert table.loc[(method, sample), "bray_curtis"] < table.loc[("cc", sample), "bray_curtis"]
    assert table.loc[("emq", "(median over samples)"), "mae"] < 0.03


def test_bootstrap_interval_covers_the_true_prevalence(shifted):
    (val_proba, val_labels), proba, labels, samples = shifted
    quantifier = fit_quantifier("emq", val_proba, val_labels)
    day1 = samples == "day1"
    estimate, low, high = bootstrap_prevalence(quantifier, "emq", proba[day1], n_boot=50)
    truth = np.bincount(labels[day1], minlength=4) / day1.sum()
    assert estimate.sum() == pytest.approx(1.0) and (low <= estimate).all() and (estimate <= high).all()
    assert ((low - 0.01 <= truth) & (truth <= high + 0.01)).all()
    assert (high - low).max() < 0.15  # an interval, not the whole simplex


def test_unknown_counting_method_is_refused():
    with pytest.raises(ValueError, match="counting method must be one of cc, pcc, pacc, emq"):
        fit_quantifier("acc", np.full((4, 2), 0.5), np.array([0, 1, 0, 1]))


def test_the_mix_reference_gives_every_sample_the_validation_mix(shifted):
    (val_proba, val_labels), proba, labels, samples = shifted
    reference = mix_reference(val_labels, labels, samples, n_classes=4).set_index("sample")
    assert set(reference["method"]) == {MIX_REFERENCE}
    mix = np.bincount(val_labels, minlength=4) / len(val_labels)
    for sample in ("day1", "day2"):
        truth = np.bincount(labels[samples == sample], minlength=4) / (samples == sample).sum()
        # Bray–Curtis of two compositions of one total: half the L1 distance of the prevalences.
        assert reference.loc[sample, "bray_curtis"] == pytest.approx(np.abs(truth - mix).sum() / 2)
        assert reference.loc[sample, "mae"] == pytest.approx(np.abs(truth - mix).mean())
        assert reference.loc[sample, "n"] == 2000
    pooled = np.bincount(labels, minlength=4) / len(labels)
    assert reference.loc["(pooled)", "bray_curtis"] == pytest.approx(np.abs(pooled - mix).sum() / 2)
    # The days' mixes are far from the uniform validation mix, and the corrected methods see it.
    table = quantification_table(val_proba, val_labels, proba, labels, samples).set_index(
        ["method", "sample"]
    )
    for method in ("pacc", "emq"):
        assert table.loc[(method, "day1"), "bray_curtis"] < reference.loc["day1", "bray_curtis"] / 3
