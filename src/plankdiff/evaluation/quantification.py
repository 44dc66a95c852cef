"""Class counts under shift (issue #16): the probe a study selected on validation, counted by CC,
PCC, PACC and EMQ (`plankdiff.deploy.quantify`, QuaPy) on every image of a shifted target, per
capture day and pooled, against the true labels.

What it measures, and why this way:
- the target is uncapped (`plankdiff.study.plan.QuantificationTarget`): every ZooLake 2020 image,
  every mapped PWSSC image. A study caps its test rows per class, which flattens the class mix, and
  a counting method is judged on how well it follows that mix;
- the probe is refitted on its split's train rows with the pairs, loss and protocol the study
  selected (fitting only those pairs gives the same probe: every pair's probe starts from zeros and
  shares one seeded shuffle), so its selection is the probe stage's, made on validation;
- its posteriors are temperature-scaled on the split's validation rows (`deploy.calibrate`) before
  any counting, and the expected calibration error is reported before and after, on validation and
  on the target; the counting methods are fitted on those validation posteriors and labels;
- samples are capture days (the UTC day in the file names, `data.timestamps`): per day, pooled over
  all target images, and the median over days of at least `min_images` images of the probe's
  classes. Images of classes the probe does not know cannot be part of its compositions; their
  number per day is reported (`n_other`) beside the scores.

`plankdiff predict --sample-by day --score` computes the same table for an exported classifier on
raw images; this module computes it inside the study, from the feature stores, for every method
(raw pixels included, which cannot be exported) and seed, with each dataset's own labels (PWSSC's
coarse groups come from the mapping, not from folder names).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from plankdiff.choices import Loss
from plankdiff.data.lineage import log_readout
from plankdiff.data.prepare import PreparedDataset
from plankdiff.data.splits import Split
from plankdiff.data.timestamps import capture_days
from plankdiff.deploy.calibrate import apply_temperature, expected_calibration_error, fit_temperature
from plankdiff.deploy.quantify import MEDIAN, POOLED, mix_reference, quantification_table
from plankdiff.features.pairs import Selection
from plankdiff.features.store import FeatureStore
from plankdiff.probe.run import check_lineage, probe_features, selected_features
from plankdiff.provenance import write_json

QUANTIFICATION_FILE = "quantification.json"
DEFAULT_MIN_IMAGES = 20


@dataclass
class QuantificationResult:
    pair: str  # the probe's selection (`a` or `a+b`), as the probe stage records it
    calibration: dict  # temperature and ECE (15 bins) before and after, on validation and on the target
    # One row per (counting, sample): sample = capture day, `(pooled)` or `(median over samples)`;
    # n (images of the probe's classes), n_other (images of other classes), bray_curtis, mae,
    # in_median (a day of `min_images`+ images, in the median row).
    table: pd.DataFrame


def count_scores(
    val_proba: np.ndarray,
    val_labels: np.ndarray,
    target_proba: np.ndarray,
    target_labels: np.ndarray,
    samples: Sequence[str],
    *,
    other_samples: Sequence[str] = (),
    min_images: int = DEFAULT_MIN_IMAGES,
) -> tuple[dict, pd.DataFrame]:
    """(calibration, table) from a probe's raw posteriors: the temperature fitted on validation is
    applied to both sets, then every counting method is fitted on validation and scored per sample.
    `other_samples`: the sample of each target image of a class the probe does not know."""
    val_labels, target_labels = np.asarray(val_labels), np.asarray(target_labels)
    temperature = fit_temperature(val_proba, val_labels)
    val_scaled = apply_temperature(val_proba, temperature)
    target_scaled = apply_temperature(target_proba, temperature)
    calibration = {
        "temperature": temperature,
        "ece_val_before": expected_calibration_error(val_proba, val_labels),
        "ece_val_after": expected_calibration_error(val_scaled, val_labels),
        "ece_target_before": expected_calibration_error(target_proba, target_labels),
        "ece_target_after": expected_calibration_error(target_scaled, target_labels),
    }
    table = quantification_table(
        val_scaled, val_labels, target_scaled, target_labels, samples, min_images=min_images
    ).rename(columns={"method": "counting"})
    table = _with_other(table, other_samples, min_images)
    # A day whose images are all of other classes has no composition to score; it is still counted.
    other = set(other_samples)
    calibration["samples_of_other_classes_only"] = sorted(other - set(table["sample"]))
    return calibration, table


def _with_other(table: pd.DataFrame, other_samples: Sequence[str], min_images: int) -> pd.DataFrame:
    """`table` with `n_other` (images of classes the probe does not know, per sample, pooled and
    over the median's samples) and `in_median` (a sample of `min_images`+ images)."""
    table = table.copy()
    other = pd.Series(list(other_samples), dtype=object).value_counts()
    days = table[~table["sample"].isin([POOLED, MEDIAN])].drop_duplicates("sample")
    n_other = {s: int(other.get(s, 0)) for s in days["sample"]}
    n_other[POOLED] = int(other.sum())
    n_other[MEDIAN] = int(sum(n_other[s] for s in days.loc[days["n"] >= min_images, "sample"]))
    table.insert(3, "n_other", table["sample"].map(n_other).astype(int))
    table["in_median"] = table["sample"].isin(days.loc[days["n"] >= min_images, "sample"])
    return table


def quantification_scores(
    store: FeatureStore,
    split: Split,
    target_store: FeatureStore,
    target: Split,
    *,
    selection: Selection | str,
    loss: Loss | Sequence[Loss],
    other_rows: np.ndarray = np.array([], dtype=np.int64),
    min_images: int = DEFAULT_MIN_IMAGES,
    seed: int = 0,
    out: Path | None = None,
    config: dict | None = None,
    with_size: bool = False,
    probe_options: dict | None = None,
    bootstrap: int = 0,
) -> QuantificationResult:
    """The probe selected on `split`'s validation rows of `store` (`selection`, `loss`: what the
    probe stage chose; several losses: the one that wins on validation) refitted, then `count_scores` on the test rows of `target` (features in
    `target_store`, same backbone). `other_rows`: rows of `target_store`'s dataset of classes the
    probe does not know, counted per day."""
    selection = Selection.parse(selection) if isinstance(selection, str) else Selection.of(selection)
    missing = sorted(set(target.classes) - set(split.classes))
    if missing:
        raise ValueError(f"target {target.name}: classes {missing[:5]} are not the probe's ({split.name})")
    rows = target.indices("test")
    if not len(rows):
        raise ValueError(f"target {target.name}: no image of the probe's classes to count")
    check_lineage(target_store, target, ("test",), transductive=False)
    probe = probe_features(
        store,
        split,
        pairs=selection.names,
        loss=loss,
        fuse_top=len(selection.names),
        with_size=with_size,
        seed=seed,
        bootstrap=bootstrap,
        out=out,
        config=config,
        probe_options=probe_options,
    )
    if probe.classifier is None:
        raise ValueError("counting reads a linear probe's posteriors: use protocol linear")
    val_rows = split.indices("val")
    val_proba = probe.classifier.predict_proba(
        selected_features(store, probe.selected, val_rows, with_size=with_size)
    )
    target_proba = probe.classifier.predict_proba(
        selected_features(target_store, probe.selected, rows, with_size=with_size)
    )
    dataset = target_store.dataset()
    target_labels, days = _target_labels(split, target, dataset)
    log_readout(
        dataset,
        target.name,
        {"features": str(target_store.root), "pair": probe.selected_pair, "counting": True},
    )
    calibration, table = count_scores(
        val_proba,
        split.labels("val"),
        target_proba,
        target_labels,
        days[rows].tolist(),
        other_samples=days[np.asarray(other_rows, dtype=np.int64)].tolist(),
        min_images=min_images,
    )
    if out is not None:
        write_json(
            Path(out) / QUANTIFICATION_FILE,
            {
                "pair": probe.selected_pair,
                "split": split.name,
                "target": target.name,
                "n_target": len(rows),
                "n_other": len(other_rows),
                "min_images": min_images,
                "calibration": calibration,
                "rows": table.to_dict(orient="records"),
                "how": "probe refitted with the selected pairs and loss on the split's train rows; "
                "temperature and counting methods fitted on its val rows; scored on every target image "
                "of its classes (uncapped), per UTC capture day and pooled",
            },
        )
    return QuantificationResult(pair=probe.selected_pair, calibration=calibration, table=table)


def mix_reference_scores(
    split: Split,
    target: Split,
    dataset: PreparedDataset,
    *,
    other_rows: np.ndarray = np.array([], dtype=np.int64),
    min_images: int = DEFAULT_MIN_IMAGES,
) -> pd.DataFrame:
    """`count_scores`' table for the estimate that ignores the images (`deploy.quantify.
    mix_reference`: `split`'s validation mix for every capture day of `target`'s test rows, images
    of `dataset`): the floor every counting method is read against. No probe, no features."""
    target_labels, days = _target_labels(split, target, dataset)
    table = mix_reference(
        split.labels("val"),
        target_labels,
        days[target.indices("test")].tolist(),
        n_classes=len(split.classes),
        min_images=min_images,
    ).rename(columns={"method": "counting"})
    return _with_other(table, days[np.asarray(other_rows, dtype=np.int64)].tolist(), min_images)


def _target_labels(split: Split, target: Split, dataset: PreparedDataset) -> tuple[np.ndarray, np.ndarray]:
    """(the probe's class index of each test row of `target`, the capture day of every row of
    `dataset`). Labels by class name: the target's class list is the probe's, but never trusted by
    position."""
    to_probe = np.array([split.classes.index(c) for c in target.classes], dtype=np.int64)
    labels = to_probe[target.targets[target.indices("test")]]
    return labels, np.array(capture_days(dataset.meta["capture_time"]), dtype=object)


__all__ = [
    "DEFAULT_MIN_IMAGES",
    "QUANTIFICATION_FILE",
    "QuantificationResult",
    "count_scores",
    "mix_reference_scores",
    "quantification_scores",
]
