"""Open-set rejection on frozen features: is this image of a kind the probe was trained on at all?

A softmax probe spreads its confidence over the classes it knows, whatever it is shown, so
per-class precision thresholds (deploy's abstention) do not reject an organism it never saw or an
image of another instrument. Scores, all "higher = more unknown", each in the probe's own
standardised feature space (the classifier's train mean and std), fitted on its training rows:

- `MahalanobisScorer` ("mahalanobis"): the squared Mahalanobis distance to the nearest class mean,
  with one shared covariance (Lee et al. 2018). The covariance of the class-centred training
  features is shrunk with scikit-learn's Ledoit-Wolf estimator: diffusion blocks give 32–512
  features for as few as a handful of images per class, where the sample covariance is singular.
- `RelativeMahalanobisScorer` ("relative-mahalanobis"): the same minus the squared distance under
  one Gaussian fitted to all training features (Ren et al. 2021). The class-conditional distance
  is large wherever the features vary a lot anyway (far from the global mean, or along directions
  no class separates); subtracting the background distance keeps only what is specific to the
  classes, which is what fails the plain distance on unknowns near the middle of all classes.
- `KNNScorer` ("knn"): the distance to the k-th nearest training image after L2 normalisation
  (Sun et al. 2022, "deep nearest neighbours"): no Gaussian assumption, so it also sees unknowns
  in the gaps between irregular, multi-modal classes. Needs the training features at predict.
- `EnergyScorer` ("energy"): −T·logsumexp(logits / T) of the probe's logits (Liu et al. 2020);
  free, but a linear probe's logits ignore every direction its weights do not span.

`fit_scorer` fits the one named, `scorer_from_arrays` rebuilds it from what `state_dict` stored
(an exported classifier's probe.safetensors). `calibrate_threshold` sets the cut on validation
images of the known classes so that a chosen share (default 95 %) is kept; `rejection_metrics`
gives AUROC and the shares rejected and kept at a cut. `held_out_classes` fixes, before any result
is seen, which classes an "unseen classes" experiment keeps out of training; `open_set_split`
makes that experiment's split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.special import logsumexp
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from plankdiff.choices import OODScore
from plankdiff.data.splits import SPLITS, Split
from plankdiff.probe.knn import unit_rows
from plankdiff.probe.linear import EVAL_CHUNK, LinearClassifier
from plankdiff.probe.protocol import DEFAULT_KEEP, HOLD_OUT_EVERY

# The k of the "knn" score: the k-th nearest training image. Chosen on validation (held-out NDSB
# classes, DDPM and supervised seed 0; k in 1, 5, 10, 20, 50): AUROC falls with k, 1 is the least bad
# (docs/results/robustness.md, "Open set: scores compared"); Sun et al. 2022 use 1 to 50.
OOD_K = 1


class Scorer(Protocol):
    """An open-set score on the probe's raw input features [N, D], higher = more unknown."""

    def score(self, x_raw: np.ndarray) -> np.ndarray: ...

    def state_dict(self) -> dict[str, np.ndarray]: ...


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


@dataclass
class RelativeMahalanobisScorer:
    """`classes`' distance minus the squared Mahalanobis distance to `background_mean` under
    `background_precision`: one Ledoit-Wolf Gaussian of all training rows, same standardised space."""

    classes: MahalanobisScorer
    background_mean: np.ndarray
    background_precision: np.ndarray

    def __post_init__(self) -> None:
        self.background_mean = np.asarray(self.background_mean, dtype=np.float64)
        self.background_precision = np.asarray(self.background_precision, dtype=np.float64)
        d = self.classes.mean.shape[0]
        if self.background_mean.shape != (d,) or self.background_precision.shape != (d, d):
            raise ValueError(
                f"background Gaussian {self.background_mean.shape}, {self.background_precision.shape} "
                f"does not fit {d} features"
            )

    @classmethod
    def for_classifier(
        cls, classifier: LinearClassifier, x_raw: np.ndarray, labels: np.ndarray
    ) -> RelativeMahalanobisScorer:
        classes = MahalanobisScorer.for_classifier(classifier, x_raw, labels)
        z = (np.asarray(x_raw, dtype=np.float64) - classes.mean) / classes.std
        background = LedoitWolf().fit(z)
        return cls(
            classes=classes, background_mean=background.location_, background_precision=background.precision_
        )

    def score(self, x_raw: np.ndarray) -> np.ndarray:
        out = self.classes.score(x_raw)
        for start in range(0, len(x_raw), EVAL_CHUNK):
            z = (
                np.asarray(x_raw[start : start + EVAL_CHUNK], dtype=np.float64) - self.classes.mean
            ) / self.classes.std
            d = z - self.background_mean
            out[start : start + EVAL_CHUNK] -= np.einsum("nd,nd->n", d @ self.background_precision, d)
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.classes.state_dict() | {
            "ood_background_mean": self.background_mean.astype(np.float32),
            "ood_background_precision": self.background_precision.astype(np.float32),
        }


@dataclass
class KNNScorer:
    """Euclidean distance to the `k`-th nearest row of `bank`: the training rows standardised with
    the probe's mean and std and scaled to unit length (so it is a monotone cosine distance)."""

    mean: np.ndarray
    std: np.ndarray
    bank: np.ndarray
    k: int = OOD_K

    def __post_init__(self) -> None:
        self.bank = np.ascontiguousarray(self.bank, dtype=np.float32)
        if self.bank.ndim != 2 or self.bank.shape[1] != np.shape(self.mean)[0]:
            raise ValueError(f"kNN bank {self.bank.shape} does not fit {np.shape(self.mean)[0]} features")
        if not 1 <= self.k <= len(self.bank):
            raise ValueError(f"kNN open-set score: k = {self.k} for {len(self.bank)} training rows")
        self._index = NearestNeighbors(n_neighbors=self.k).fit(self.bank)

    @classmethod
    def for_classifier(cls, classifier: LinearClassifier, x_raw: np.ndarray, k: int = OOD_K) -> KNNScorer:
        bank = unit_rows(np.asarray(x_raw), classifier.mean, classifier.std).numpy()
        return cls(mean=classifier.mean, std=classifier.std, bank=bank, k=min(k, len(bank)))

    def score(self, x_raw: np.ndarray) -> np.ndarray:
        if not len(x_raw):
            return np.empty(0)
        distances, _ = self._index.kneighbors(unit_rows(np.asarray(x_raw), self.mean, self.std).numpy())
        return distances[:, -1].astype(np.float64)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"ood_bank": self.bank}


@dataclass
class EnergyScorer:
    """The energy of `classifier`'s logits; nothing to store beside the probe."""

    classifier: LinearClassifier

    def score(self, x_raw: np.ndarray) -> np.ndarray:
        return energy_score(self.classifier.logits(x_raw))

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}


# What each score stores in probe.safetensors beside the probe's own arrays.
OOD_ARRAYS: dict[str, tuple[str, ...]] = {
    "mahalanobis": ("ood_means", "ood_precision"),
    "relative-mahalanobis": (
        "ood_means",
        "ood_precision",
        "ood_background_mean",
        "ood_background_precision",
    ),
    "knn": ("ood_bank",),
    "energy": (),
}


def fit_scorer(
    method: OODScore,
    classifier: LinearClassifier,
    x_train: np.ndarray,
    train_labels: np.ndarray,
    *,
    k: int = OOD_K,
) -> Scorer:
    """The score `method` of `classifier`, fitted on the rows it was trained on (raw features)."""
    if method == "mahalanobis":
        return MahalanobisScorer.for_classifier(classifier, x_train, train_labels)
    if method == "relative-mahalanobis":
        return RelativeMahalanobisScorer.for_classifier(classifier, x_train, train_labels)
    if method == "knn":
        return KNNScorer.for_classifier(classifier, x_train, k=k)
    if method == "energy":
        return EnergyScorer(classifier)
    raise ValueError(f"unknown open-set score {method!r}")


def scorer_from_arrays(
    method: OODScore,
    classifier: LinearClassifier,
    arrays: Mapping[str, np.ndarray],
    *,
    k: int = OOD_K,
) -> Scorer:
    """The score `method` rebuilt from its stored `arrays` (`Scorer.state_dict`) in `classifier`'s
    space; a ValueError naming what is missing or does not fit."""
    missing = [name for name in OOD_ARRAYS[method] if name not in arrays]
    if missing:
        raise ValueError(f"the {method} open-set score needs {', '.join(missing)}")
    if method == "energy":
        return EnergyScorer(classifier)
    if method == "knn":
        return KNNScorer(mean=classifier.mean, std=classifier.std, bank=arrays["ood_bank"], k=k)
    classes = MahalanobisScorer.from_arrays(
        mean=classifier.mean,
        std=classifier.std,
        ood_means=arrays["ood_means"],
        ood_precision=arrays["ood_precision"],
    )
    if classes.means.shape[0] != classifier.n_classes:
        raise ValueError(
            f"ood_means has {classes.means.shape[0]} class rows for {classifier.n_classes} classes"
        )
    if method == "mahalanobis":
        return classes
    return RelativeMahalanobisScorer(
        classes=classes,
        background_mean=arrays["ood_background_mean"],
        background_precision=arrays["ood_background_precision"],
    )


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


def held_out_rows(split: Split, held_out: Sequence[str], part: str = "test") -> np.ndarray:
    """The rows of `part` whose class is one of `held_out`: the unseen-class images to reject
    (validation ones to choose a score on, test ones to measure it once)."""
    unknown = set(held_out)
    missing = unknown - set(split.classes)
    if missing:
        raise ValueError(f"held-out class(es) not in split {split.name}: {sorted(missing)}")
    rows = split.rows[part]
    target = split.targets[rows]
    names = np.asarray(split.classes, dtype=object)[np.maximum(target, 0)]
    return rows[(target >= 0) & np.isin(names, list(unknown))]


def open_set_split(split: Split, held_out: Sequence[str]) -> tuple[Split, np.ndarray]:
    """The split without the held-out classes (train, val, test; classes renumbered), and the test
    rows of the held-out classes: the unseen-class images to reject."""
    unknown_rows = held_out_rows(split, held_out, "test")
    unknown = set(held_out)
    kept = [c for c in split.classes if c not in unknown]
    remap = np.full(len(split.classes), -1, dtype=np.int64)
    for new, name in enumerate(kept):
        remap[split.classes.index(name)] = new
    targets = np.where(split.targets >= 0, remap[np.maximum(split.targets, 0)], -1)
    rows = {s: split.rows[s][targets[split.rows[s]] >= 0] for s in SPLITS}
    known = Split(name=f"{split.name}-open-set", rows=rows, targets=targets, classes=kept)
    return known, unknown_rows


def unknown_split(split: Split, unknown_rows: np.ndarray, val_rows: np.ndarray | None = None) -> Split:
    """The held-out classes' test rows (and, given, their validation rows) as a split of their own,
    for saving and lineage checks."""
    empty = np.array([], dtype=np.int64)
    return Split(
        name=f"{split.name}-open-set-unknown",
        rows={
            "train": empty,
            "val": empty if val_rows is None else np.asarray(val_rows, dtype=np.int64),
            "test": np.asarray(unknown_rows, dtype=np.int64),
        },
        targets=split.targets,
        classes=list(split.classes),
    )


__all__ = [
    "DEFAULT_KEEP",
    "OOD_ARRAYS",
    "OOD_K",
    "EnergyScorer",
    "KNNScorer",
    "MahalanobisScorer",
    "OODScore",
    "RelativeMahalanobisScorer",
    "Scorer",
    "fit_scorer",
    "scorer_from_arrays",
    "calibrate_threshold",
    "energy_score",
    "held_out_classes",
    "held_out_rows",
    "open_set_split",
    "rejection_metrics",
    "unknown_split",
]
