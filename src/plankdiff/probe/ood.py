"""Open-set rejection on frozen features: is this image of a kind the probe was trained on at all?

A softmax probe spreads its confidence over the classes it knows, whatever it is shown, so
per-class precision thresholds (deploy's abstention) do not reject an organism it never saw or an
image of another instrument. Two scores, both "higher = more unknown":

- `MahalanobisScorer`: the squared Mahalanobis distance to the nearest class mean, with one shared
  covariance (Lee et al. 2018), in the probe's own standardised feature space (the classifier's
  train mean and std). The covariance of the class-centred training features is shrunk with
  scikit-learn's Ledoit-Wolf estimator: diffusion blocks give 32–512 features for as few as a
  handful of images per class, where the sample covariance is singular.
- `energy_score`: −T·logsumexp(logits / T) of the probe's logits (Liu et al. 2020); free, but a
  linear probe's logits ignore every direction its weights do not span.

`calibrate_threshold` sets the cut on validation images of the known classes so that a chosen share
(default 95 %) is kept; `rejection_metrics` gives AUROC and the shares rejected and kept at a cut.
`held_out_classes` fixes, before any result is seen, which classes an "unseen classes" experiment
keeps out of training; `open_set_split` makes that experiment's split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from plankdiff.choices import OODScore
from plankdiff.data.splits import SPLITS, Split
from plankdiff.probe.linear import EVAL_CHUNK, LinearClassifier
from plankdiff.probe.protocol import DEFAULT_KEEP, HOLD_OUT_EVERY


@dataclass
class MahalanobisScorer:
    """min over classes of (z − μ_c)ᵀ P (z − μ_c), z = (x − mean) / std. `means` is [C, D] (NaN rows
    for classes without training rows, which are skipped), `precision` [D, D]."""

    mean: np.ndarray
    std: np.ndarray
    means: np.ndarray
    precision: np.ndarray

    def __post_init__(self) -> None:
        for name in ("mean", "std", "means", "precision"):
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=np.float64))
        d = self.mean.shape[0]
        if not (self.std.shape == (d,) and self.means.shape[1] == d and self.precision.shape == (d, d)):
            raise ValueError(
                f"Mahalanobis arrays disagree: mean {self.mean.shape}, std {self.std.shape}, "
                f"means {self.means.shape}, precision {self.precision.shape}"
            )

    @classmethod
    def fit(
        cls,
        x_raw: np.ndarray,
        labels: np.ndarray,
        *,
        mean: np.ndarray,
        std: np.ndarray,
        n_classes: int,
    ) -> MahalanobisScorer:
        """From the probe's training rows and its standardisation (`LinearClassifier.mean/std`)."""
        z = (np.asarray(x_raw, dtype=np.float64) - mean) / std
        labels = np.asarray(labels, dtype=np.int64)
        if len(z) != len(labels) or len(z) < 2:
            raise ValueError(
                f"need at least 2 labelled training rows, got {len(z)} rows, {len(labels)} labels"
            )
        means = np.full((n_classes, z.shape[1]), np.nan)
        centred = np.empty_like(z)
        for c in np.unique(labels):
            rows = labels == c
            means[c] = z[rows].mean(axis=0)
            centred[rows] = z[rows] - means[c]
        precision = LedoitWolf(assume_centered=True).fit(centred).precision_
        return cls(mean=mean, std=std, means=means, precision=precision)

    @classmethod
    def for_classifier(
        cls, classifier: LinearClassifier, x_raw: np.ndarray, labels: np.ndarray
    ) -> MahalanobisScorer:
        """In `classifier`'s standardised space, from the rows it was trained on."""
        return cls.fit(
            x_raw, labels, mean=classifier.mean, std=classifier.std, n_classes=classifier.n_classes
        )

    def score(self, x_raw: np.ndarray) -> np.ndarray:
        known = ~np.isnan(self.means).any(axis=1)
        means = self.means[known]
        # (z − μ)ᵀP(z − μ) = zᵀPz − 2 zᵀPμ + μᵀPμ, for all classes at once.
        p_means = means @ self.precision
        constant = np.einsum("cd,cd->c", p_means, means)
        out = np.empty(len(x_raw), dtype=np.float64)
        for start in range(0, len(x_raw), EVAL_CHUNK):
            z = (np.asarray(x_raw[start : start + EVAL_CHUNK], dtype=np.float64) - self.mean) / self.std
            quadratic = np.einsum("nd,nd->n", z @ self.precision, z)
            out[start : start + EVAL_CHUNK] = quadratic + (constant - 2 * z @ p_means.T).min(axis=1)
        return np.maximum(out, 0.0)  # rounding can dip a point sitting on a mean below zero

    def state_dict(self) -> dict[str, np.ndarray]:
        """float32 arrays for `safetensors.numpy.save_file` (NaN rows mark classes without rows)."""
        return {
            "ood_means": self.means.astype(np.float32),
            "ood_precision": self.precision.astype(np.float32),
        }

    @classmethod
    def from_arrays(
        cls, *, mean: np.ndarray, std: np.ndarray, ood_means: np.ndarray, ood_precision: np.ndarray
    ) -> MahalanobisScorer:
        return cls(mean=mean, std=std, means=ood_means, precision=ood_precision)


def energy_score(logits: np.ndarray, *, temperature: float = 1.0) -> np.ndarray:
    """−T·logsumexp(logits / T): higher for inputs on which no class's logit stands out."""
    if temperature <= 0:
        raise ValueError(f"energy temperature must be positive, got {temperature}")
    return -temperature * logsumexp(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def calibrate_threshold(known_scores: np.ndarray, *, keep: float = DEFAULT_KEEP) -> float:
    """The cut that keeps a share `keep` of `known_scores` (validation images of the known classes):
    an image is `unknown` when its score is above it."""
    scores = np.asarray(known_scores, dtype=np.float64)
    if not 0 < keep <= 1:
        raise ValueError(f"the share of known images to keep must be in (0, 1], got {keep}")
    if scores.size == 0:
        raise ValueError("no validation scores to calibrate the unknown threshold on")
    return float(np.quantile(scores, keep, method="higher"))


def rejection_metrics(
    known_scores: np.ndarray, unknown_scores: np.ndarray, threshold: float
) -> dict[str, float]:
    """AUROC of the score separating unknown (positive) from known images, and at `threshold` the
    share of unknown images rejected and of known images kept."""
    known, unknown = np.asarray(known_scores, float), np.asarray(unknown_scores, float)
    if known.size == 0 or unknown.size == 0:
        raise ValueError(f"need known and unknown scores, got {known.size} and {unknown.size}")
    truth = np.concatenate([np.zeros(known.size), np.ones(unknown.size)])
    return {
        "auroc": float(roc_auc_score(truth, np.concatenate([known, unknown]))),
        "unknown_rejected": float((unknown > threshold).mean()),
        "known_kept": float((known <= threshold).mean()),
        "threshold": float(threshold),
        "n_known": int(known.size),
        "n_unknown": int(unknown.size),
    }


def held_out_classes(classes: Sequence[str], *, every: int = HOLD_OUT_EVERY) -> list[str]:
    """Every `every`-th class name in sorted order, starting with the first: a fixed fifth by
    default, chosen by name only, so it cannot follow any result (NDSB: 25 of 121 classes)."""
    if every < 2:
        raise ValueError(f"hold out every n-th class needs n >= 2, got {every}")
    return sorted(set(classes))[::every]


def open_set_split(split: Split, held_out: Sequence[str]) -> tuple[Split, np.ndarray]:
    """The split without the held-out classes (train, val, test; classes renumbered), and the test
    rows of the held-out classes: the unseen-class images to reject."""
    unknown = set(held_out)
    missing = unknown - set(split.classes)
    if missing:
        raise ValueError(f"held-out class(es) not in split {split.name}: {sorted(missing)}")
    kept = [c for c in split.classes if c not in unknown]
    remap = np.full(len(split.classes), -1, dtype=np.int64)
    for new, name in enumerate(kept):
        remap[split.classes.index(name)] = new
    targets = np.where(split.targets >= 0, remap[np.maximum(split.targets, 0)], -1)
    rows = {s: split.rows[s][targets[split.rows[s]] >= 0] for s in SPLITS}
    test = split.rows["test"]
    unknown_rows = test[(split.targets[test] >= 0) & (targets[test] < 0)]
    known = Split(name=f"{split.name}-open-set", rows=rows, targets=targets, classes=kept)
    return known, unknown_rows


def unknown_split(split: Split, unknown_rows: np.ndarray) -> Split:
    """The held-out classes' test rows as a split of their own (test only), for saving and checks."""
    empty = np.array([], dtype=np.int64)
    return Split(
        name=f"{split.name}-open-set-unknown",
        rows={"train": empty, "val": empty, "test": np.asarray(unknown_rows, dtype=np.int64)},
        targets=split.targets,
        classes=list(split.classes),
    )


__all__ = [
    "DEFAULT_KEEP",
    "MahalanobisScorer",
    "OODScore",
    "calibrate_threshold",
    "energy_score",
    "held_out_classes",
    "open_set_split",
    "rejection_metrics",
    "unknown_split",
]
