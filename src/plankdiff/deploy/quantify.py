"""Class prevalences per sample corrected for prior shift, from the probe's posteriors, with QuaPy.

Counting the top-1 predictions (classify and count, CC) is biased whenever the class mix of a
sample differs from the training mix: the classifier's errors move counts towards the classes it
confuses them with. QuaPy's aggregative quantifiers correct this from the posteriors the probe
already computes; they are fitted on validation posteriors and labels (nothing is retrained):

- `cc`: classify and count (the argmax of each posterior);
- `pcc`: probabilistic classify and count (the mean posterior);
- `pacc`: PCC adjusted by the validation misclassification rates (assumes p(x|y) unchanged);
- `emq`: EM prior adjustment (Saerens-Latinne-Decaestecker); assumes only the class priors change,
  and wants calibrated posteriors (temperature scaling in `calibrate`).

`bootstrap_prevalence` gives percentile intervals by resampling a sample's images;
`quantification_table` scores every method against true labels (Bray-Curtis and mean absolute
prevalence error per sample and pooled), the table issue #16 asks for on the two shifts;
`mix_reference` scores the estimate that ignores the images (the validation mix for every sample),
the floor a counting method has to beat.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import get_args

import numpy as np
import pandas as pd
from quapy.method.aggregative import CC, EMQ, PACC, PCC
from sklearn.base import BaseEstimator, ClassifierMixin

from plankdiff.choices import Counting
from plankdiff.deploy.score import bray_curtis

COUNTINGS: tuple[str, ...] = get_args(Counting)
# The `sample` of `quantification_table`'s summary rows.
POOLED, MEDIAN = "(pooled)", "(median over samples)"
# The `method` of `mix_reference`'s rows: no counting method, the validation rows' class mix.
MIX_REFERENCE = "validation mix"
TABLE_COLUMNS = ["method", "sample", "n", "bray_curtis", "mae"]
_METHODS = {"cc": CC, "pcc": PCC, "pacc": PACC, "emq": EMQ}


class _FixedPosteriors(BaseEstimator, ClassifierMixin):
    """Stands for the probe inside QuaPy: it only needs the class indices; posteriors come precomputed."""

    def __init__(self, n_classes: int = 2):
        self.n_classes = n_classes
        self.classes_ = np.arange(n_classes)

    def fit(self, x, y):  # QuaPy checks for it; with fit_classifier=False it is never called
        raise NotImplementedError("the probe is fitted elsewhere; QuaPy gets its posteriors")

    def predict_proba(self, x):
        raise NotImplementedError("posteriors are passed to QuaPy precomputed")


def fit_quantifier(method: Counting, val_proba: np.ndarray, val_labels: np.ndarray):
    """A QuaPy aggregative quantifier fitted on validation posteriors [N, C] and class indices [N]."""
    if method not in _METHODS:
        raise ValueError(f"counting method must be one of {', '.join(COUNTINGS)}, not {method!r}")
    val_proba = np.asarray(val_proba, dtype=np.float64)
    n_classes, val_labels = val_proba.shape[1], np.asarray(val_labels)
    options = {"val_split": None} if method == "pacc" else {}
    quantifier = _METHODS[method](_FixedPosteriors(n_classes), fit_classifier=False, **options)
    predictions = val_proba.argmax(axis=1) if method == "cc" else val_proba
    quantifier.aggregation_fit(predictions, val_labels)
    if method == "emq":
        # EM starts from the prior the posteriors were trained under. The splits are stratified, so
        # the validation mix is the training mix (QuaPy's `fit` would read it off the train labels).
        quantifier.train_prevalence = np.bincount(val_labels, minlength=n_classes) / len(val_labels)
    return quantifier


def estimate_prevalence(quantifier, method: Counting, proba: np.ndarray) -> np.ndarray:
    """Class prevalences [C] of one sample's posteriors [n, C] (sums to 1)."""
    proba = np.asarray(proba, dtype=np.float64)
    return np.asarray(
        quantifier.aggregate(proba.argmax(axis=1) if method == "cc" else proba), dtype=np.float64
    )


def bootstrap_prevalence(
    quantifier, method: Counting, proba: np.ndarray, *, n_boot: int = 200, level: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(estimate, low, high) per class: the estimate on the sample, and percentile bounds over
    `n_boot` resamples of its images (with replacement; the quantifier stays fitted)."""
    rng = np.random.default_rng(seed)
    estimate = estimate_prevalence(quantifier, method, proba)
    draws = np.stack(
        [
            estimate_prevalence(quantifier, method, proba[rng.integers(0, len(proba), len(proba))])
            for _ in range(n_boot)
        ]
    )
    tail = (1 - level) / 2 * 100
    return estimate, np.percentile(draws, tail, axis=0), np.percentile(draws, 100 - tail, axis=0)


def quantification_table(
    val_proba: np.ndarray,
    val_labels: np.ndarray,
    test_proba: np.ndarray,
    test_labels: np.ndarray,
    samples: Sequence[str] | None = None,
    *,
    methods: Sequence[Counting] = COUNTINGS,
    min_images: int = 1,
) -> pd.DataFrame:
    """Every counting method scored on a shifted test set, per sample and pooled.

    Rows: one per (method, sample) plus one per method with sample `(pooled)` (all test images as one
    sample) and one with sample `(median over samples)`. Columns: `bray_curtis` between true and
    estimated counts (prevalence × n), `mae` (mean absolute prevalence error over classes), `n`.
    `samples`: one sample id per test row (e.g. capture day); None = one sample. The median is over
    the samples of at least `min_images` images (its `n`: their images; NaN when there is none):
    a day of three images has a composition no counting method can be judged on.
    """
    test_proba, test_labels = np.asarray(test_proba), np.asarray(test_labels)
    if len(test_proba) != len(test_labels):
        raise ValueError(f"{len(test_proba)} posteriors, {len(test_labels)} labels")
    frames = []
    for method in methods:
        quantifier = fit_quantifier(method, val_proba, val_labels)
        frames.append(
            _scored(
                method,
                lambda mask, q=quantifier, m=method: estimate_prevalence(q, m, test_proba[mask]),
                test_labels,
                samples,
                n_classes=test_proba.shape[1],
                min_images=min_images,
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TABLE_COLUMNS)


def mix_reference(
    val_labels: np.ndarray,
    test_labels: np.ndarray,
    samples: Sequence[str] | None = None,
    *,
    n_classes: int,
    min_images: int = 1,
) -> pd.DataFrame:
    """`quantification_table`'s rows (method `MIX_REFERENCE`) for the estimate that does not look at
    the images: every sample is given the validation rows' class mix, which is the training mix for
    the stratified splits this package makes. A counting method that does not beat it tells the
    user nothing about the sample that the training set did not."""
    val_labels = np.asarray(val_labels, dtype=np.int64)
    mix = np.bincount(val_labels, minlength=n_classes) / len(val_labels)
    return _scored(
        MIX_REFERENCE,
        lambda mask: mix,
        np.asarray(test_labels, dtype=np.int64),
        samples,
        n_classes=n_classes,
        min_images=min_images,
    )


def _scored(
    method: str,
    estimate: Callable[[np.ndarray], np.ndarray],
    test_labels: np.ndarray,
    samples: Sequence[str] | None,
    *,
    n_classes: int,
    min_images: int,
) -> pd.DataFrame:
    """One method's rows: per sample, pooled and the median over samples of `min_images`+ images;
    `estimate(mask)` is the prevalence vector it gives the images `mask` selects."""
    if min_images < 1:
        raise ValueError(f"min_images must be at least 1, not {min_images}")
    samples = np.asarray(samples if samples is not None else ["(all)"] * len(test_labels))
    if len(samples) != len(test_labels):
        raise ValueError(f"{len(test_labels)} labels, {len(samples)} sample ids")
    rows, per_sample = [], []
    groups = [(s, samples == s) for s in sorted(set(samples))]
    for sample, mask in [*groups, (POOLED, np.ones(len(samples), bool))]:
        truth = np.bincount(test_labels[mask], minlength=n_classes) / mask.sum()
        prevalence = estimate(mask)
        row = {
            "method": method,
            "sample": sample,
            "n": int(mask.sum()),
            "bray_curtis": bray_curtis(truth * mask.sum(), prevalence * mask.sum()),
            "mae": float(np.abs(truth - prevalence).mean()),
        }
        rows.append(row)
        if sample != POOLED and row["n"] >= min_images:
            per_sample.append(row)
    rows.append(
        {
            "method": method,
            "sample": MEDIAN,
            "n": int(sum(r["n"] for r in per_sample)),
            "bray_curtis": _median(per_sample, "bray_curtis"),
            "mae": _median(per_sample, "mae"),
        }
    )
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _median(rows: list[dict], key: str) -> float:
    return float(np.median([r[key] for r in rows])) if rows else float("nan")


def sample_counts(
    quantifier, method: Counting, proba: np.ndarray, *, n_boot: int = 200, level: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, low, high) per class for one sample's posteriors [n, C]: the prevalences of
    `bootstrap_prevalence` times the sample's n images. An empty sample counts zero, interval (0, 0)."""
    n, n_classes = np.shape(proba)
    if n == 0:
        zeros = np.zeros(n_classes)
        return zeros, zeros, zeros
    estimate, low, high = bootstrap_prevalence(
        quantifier, method, proba, n_boot=n_boot, level=level, seed=seed
    )
    return estimate * n, low * n, high * n
