"""Abstention: a per-class probability threshold below which a prediction becomes `unclassified`;
open-set rejection: an out-of-distribution score above which an image becomes `unknown`.

A plankton survey counts organisms per class, so a wrong label inflates some other class's count,
while an abstention only lowers coverage (and the unclassified images can go to a taxonomist). The
thresholds are calibrated on validation data for a target precision: for class c, τ_c is the
smallest probability such that, among validation images predicted c with p ≥ τ_c, at least the
target fraction truly are c. The smallest such τ keeps as many images classified as the target
allows. When no τ reaches the target, τ_c = `ALWAYS_ABSTAIN` (above any probability), so the
class is never decided. A class predicted fewer than `MIN_PREDICTIONS` times on validation has no
usable estimate of its own; it falls back to one global threshold computed the same way over the
predictions of every class.

Abstention only weighs the classes the probe knows: a softmax spreads its confidence over them
whatever it is shown, so an organism never seen or an image of another instrument can be decided
with high confidence. `OpenSet` records a second, separate cut on an out-of-distribution score of
the probe's features (`plankdiff.probe.ood`), calibrated on validation so that a chosen share of
in-distribution images is kept; an image beyond it is `unknown`, whatever its posteriors say.

One image's score rarely tells another instrument's images from the training ones (robustness.md:
a fifth to a quarter rejected), but a sample of hundreds carries far more evidence: under no shift
its share of `unknown` images is the validation share (1 - val_kept), so a sample with many more is
flagged (`OpenSet.excess_unknown_p`, a one-sided Fisher exact test of the sample's count against
the validation count, so the validation set's own finite size is accounted for).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from plankdiff.choices import OODScore

DEFAULT_TARGET_PRECISION = 0.9
MIN_PREDICTIONS = 5
ALWAYS_ABSTAIN = 1.01  # above any softmax probability: predictions of this class always abstain
# A sample whose share of `unknown` images exceeds validation's with a one-sided p below this is
# flagged as unlike the training images (counts_wide.csv `shift_alarm`). Strict, because a survey
# has many samples and a false alarm on each would teach users to ignore it.
SHIFT_ALARM_P = 0.001
Status = Literal["calibrated", "unreachable", "global", "given"]
STATUS_MEANING = {
    "calibrated": "own threshold reaches the target precision on validation",
    "unreachable": "no threshold reaches the target precision on validation: always abstains",
    "global": f"fewer than {MIN_PREDICTIONS} validation predictions: uses the global threshold",
    "given": "threshold set by hand at export",
}


class CoverageCurve(NamedTuple):
    """What a single threshold τ keeps, for every τ among the observed confidences, highest first."""

    threshold: np.ndarray  # τ
    kept: np.ndarray  # images with p ≥ τ
    correct: np.ndarray  # correct ones among them
    total: int  # images in all

    @property
    def coverage(self) -> np.ndarray:
        return self.kept / self.total

    @property
    def accuracy(self) -> np.ndarray:
        """Accuracy (precision) of the kept images; at the lowest τ, the accuracy of all of them."""
        return self.correct / self.kept

    def widest_reaching(self, target: float) -> int | None:
        """The index of the lowest τ (largest coverage) whose kept images reach `target` accuracy,
        or None when none does. Compares counts, not ratios: no rounding at the target."""
        reached = np.flatnonzero(self.correct >= target * self.kept)
        return int(reached[-1]) if len(reached) else None


def coverage_curve(confidence: np.ndarray, correct: np.ndarray) -> CoverageCurve:
    """The risk–coverage curve of one confidence threshold: as τ rises, fewer images are kept.

    Only observed values are candidates: between two of them the kept set, and so the accuracy,
    does not change. Ties are kept together, since a threshold cannot split equal probabilities.
    """
    confidence, correct = np.asarray(confidence), np.asarray(correct, dtype=bool)
    if confidence.shape != correct.shape or confidence.ndim != 1:
        raise ValueError("one correctness flag per confidence")
    order = np.argsort(-confidence, kind="stable")
    p, hits = confidence[order], np.cumsum(correct[order])
    # What "keep p >= p[i]" keeps is read at the last index of each tie group.
    last_of_tie = np.r_[p[1:] != p[:-1], True] if len(p) else np.zeros(0, dtype=bool)
    kept = np.arange(1, len(p) + 1)
    return CoverageCurve(p[last_of_tie], kept[last_of_tie], hits[last_of_tie], len(p))


def smallest_threshold(confidence: np.ndarray, correct: np.ndarray, *, target: float) -> float | None:
    """The smallest τ among the observed confidences with precision(p ≥ τ) ≥ target; None if none."""
    curve = coverage_curve(confidence, correct)
    widest = curve.widest_reaching(target)
    return None if widest is None else float(curve.threshold[widest])


@dataclass
class Abstention:
    """Per-class thresholds, how each was obtained, and the target they were calibrated for."""

    thresholds: dict[str, float]
    status: dict[str, Status]
    target_precision: float | None = None
    global_threshold: float | None = None
    val_predictions: dict[str, int] | None = None

    def array(self, classes: Sequence[str]) -> np.ndarray:
        """Thresholds in class order, for `decide`."""
        missing = set(classes) - set(self.thresholds)
        if missing:
            raise ValueError(f"no abstention threshold for class(es) {sorted(missing)}")
        return np.array([self.thresholds[c] for c in classes], dtype=np.float64)

    @property
    def always_abstain(self) -> list[str]:
        return [c for c, t in self.thresholds.items() if t > 1.0]

    def to_card(self) -> dict[str, Any]:
        return {
            "target_precision": self.target_precision,
            "min_predictions": MIN_PREDICTIONS,
            "global_threshold": self.global_threshold,
            "thresholds": self.thresholds,
            "status": self.status,
            "status_meaning": {s: STATUS_MEANING[s] for s in sorted(set(self.status.values()))},
            "always_abstain": self.always_abstain,
            "val_predictions": self.val_predictions,
        }

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> Abstention:
        return cls(
            thresholds={c: float(t) for c, t in card["thresholds"].items()},
            status=dict(card["status"]),
            target_precision=card.get("target_precision"),
            global_threshold=card.get("global_threshold"),
            val_predictions=card.get("val_predictions"),
        )

    @classmethod
    def given(cls, thresholds: Mapping[str, float]) -> Abstention:
        """Thresholds chosen by hand (no calibration record): a value above 1 always abstains."""
        return cls(
            thresholds={c: float(t) for c, t in thresholds.items()},
            status={c: "given" for c in thresholds},
        )


OOD_MEANING = {
    "mahalanobis": "squared Mahalanobis distance to the nearest class mean of the probe's training "
    "features, in the probe's standardised feature space, one shared Ledoit-Wolf covariance",
    "relative-mahalanobis": "the mahalanobis score minus the squared Mahalanobis distance under one "
    "Ledoit-Wolf Gaussian of all the probe's training features (Ren et al. 2021), same space",
    "knn": "distance to the k-th nearest training image, features standardised as the probe's and "
    "scaled to unit length (Sun et al. 2022)",
    "energy": "-logsumexp of the probe's logits (T = 1, before temperature scaling)",
}


@dataclass(frozen=True)
class OpenSet:
    """The open-set cut as the card records it: an image whose `method` score is above `threshold`
    is `unknown`. `keep`: the share of validation images the cut was asked to keep; `val_kept` and
    `test_kept`: the shares it keeps there (test measured once at export, never used to set it)."""

    method: OODScore
    keep: float
    threshold: float
    val_kept: float
    test_kept: float | None = None
    n_val: int = 0
    n_test: int = 0
    k: int | None = None  # the knn score's k (None for the other scores)

    def unknown(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores, dtype=np.float64) > self.threshold

    @property
    def val_unknown(self) -> int:
        """How many validation images the cut calls unknown (the card keeps their share and number)."""
        return round((1.0 - self.val_kept) * self.n_val)

    def excess_unknown_p(self, unknown: int, n_images: int) -> float:
        """One-sided p of a sample having `unknown` of its `n_images` beyond the cut if it were drawn
        like the validation images (Fisher exact, sample against validation); NaN where it cannot be
        told: an empty sample, or a card written without its validation size."""
        if n_images <= 0 or self.n_val <= 0:
            return float("nan")
        if not 0 <= unknown <= n_images:
            raise ValueError(f"{unknown} unknown images in a sample of {n_images}")
        from scipy.stats import fisher_exact

        table = [[unknown, n_images - unknown], [self.val_unknown, self.n_val - self.val_unknown]]
        return float(fisher_exact(table, alternative="greater").pvalue)

    def to_card(self) -> dict[str, Any]:
        return {
            "method": self.method,
            **({"k": self.k} if self.k is not None else {}),
            "meaning": OOD_MEANING[self.method],
            "keep": self.keep,
            "threshold": self.threshold,
            "val_kept": self.val_kept,
            "test_kept": self.test_kept,
            "n_val": self.n_val,
            "n_test": self.n_test,
            "calibrated_on": "the split's val rows (in-distribution); test rows only measured",
        }

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> OpenSet:
        if card.get("method") not in OOD_MEANING:
            raise ValueError(f"open-set method {card.get('method')!r} is not one of {', '.join(OOD_MEANING)}")
        return cls(
            method=card["method"],
            keep=float(card["keep"]),
            threshold=float(card["threshold"]),
            val_kept=float(card["val_kept"]),
            test_kept=None if card.get("test_kept") is None else float(card["test_kept"]),
            n_val=int(card.get("n_val", 0)),
            n_test=int(card.get("n_test", 0)),
            k=None if card.get("k") is None else int(card["k"]),
        )


def calibrate_thresholds(
    proba: np.ndarray,
    labels: np.ndarray,
    *,
    classes: Sequence[str],
    target_precision: float = DEFAULT_TARGET_PRECISION,
) -> Abstention:
    """Per-class thresholds from validation probabilities [N, C] and true class indices [N]."""
    if not (proba.ndim == 2 and proba.shape[1] == len(classes)):
        raise ValueError(f"probabilities {proba.shape} for {len(classes)} classes")
    if len(labels) != len(proba):
        raise ValueError(f"{len(labels)} labels for {len(proba)} probability rows")
    if not (0 < target_precision <= 1):
        raise ValueError(f"--target-precision {target_precision}: must be in (0, 1]")
    predicted = proba.argmax(axis=1)
    confidence = proba.max(axis=1).astype(np.float64)
    correct = predicted == np.asarray(labels)
    fallback = smallest_threshold(confidence, correct, target=target_precision)
    global_threshold = ALWAYS_ABSTAIN if fallback is None else fallback
    thresholds: dict[str, float] = {}
    status: dict[str, Status] = {}
    counts: dict[str, int] = {}
    for index, name in enumerate(classes):
        mine = predicted == index
        counts[name] = int(mine.sum())
        if counts[name] < MIN_PREDICTIONS:
            thresholds[name], status[name] = global_threshold, "global"
            continue
        own = smallest_threshold(confidence[mine], correct[mine], target=target_precision)
        if own is None:
            thresholds[name], status[name] = ALWAYS_ABSTAIN, "unreachable"
        else:
            thresholds[name], status[name] = own, "calibrated"
    return Abstention(
        thresholds=thresholds,
        status=status,
        target_precision=target_precision,
        global_threshold=global_threshold,
        val_predictions=counts,
    )


def decide(proba: np.ndarray, thresholds: np.ndarray | None) -> np.ndarray:
    """The top-1 class index per row, or -1 where its probability is below that class's threshold."""
    predicted = proba.argmax(axis=1)
    if thresholds is None:
        return predicted
    if thresholds.shape != (proba.shape[1],):
        raise ValueError(f"{thresholds.shape} thresholds for {proba.shape[1]} classes")
    confidence = proba[np.arange(len(proba)), predicted]
    return np.where(confidence >= thresholds[predicted], predicted, -1)


def selective_scores(proba: np.ndarray, labels: np.ndarray, thresholds: np.ndarray | None) -> dict[str, Any]:
    """Coverage (fraction decided) and accuracy among the decided images: what abstention buys.

    The accuracy is None when nothing is decided, rather than a 0 that would read as all wrong.
    """
    if not len(proba):
        raise ValueError("no images to score")
    decided = decide(proba, thresholds)
    kept = decided >= 0
    hits = decided[kept] == np.asarray(labels)[kept]
    return {
        "coverage": float(kept.mean()),
        "n_decided": int(kept.sum()),
        "accuracy_when_decided": float(hits.mean()) if kept.any() else None,
    }


# -- temperature scaling ------------------------------------------------------------------------


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): T > 1 softens over-confident posteriors, T < 1 sharpens them."""
    logits = np.log(np.clip(np.asarray(proba, dtype=np.float64), 1e-12, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def fit_temperature(proba: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising the validation negative log-likelihood (Guo et al. 2017), in [0.05, 20].

    One parameter, so the argmax (and accuracy) never changes; only the confidence does.
    """
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("temperature scaling needs validation images; the split has none")

    def nll(log_t: float) -> float:
        scaled = apply_temperature(proba, float(np.exp(log_t)))
        return float(-np.log(np.clip(scaled[np.arange(len(labels)), labels], 1e-12, None)).mean())

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def expected_calibration_error(proba: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> float:
    """Top-label ECE: |accuracy − mean confidence| per equal-width confidence bin, weighted by its size."""
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == np.asarray(labels)
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    gaps = [
        abs(correct[bins == b].mean() - confidence[bins == b].mean()) * (bins == b).mean()
        for b in np.unique(bins)
    ]
    return float(np.sum(gaps))
