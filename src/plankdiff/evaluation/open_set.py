"""Open-set rejection measured with classes the probe never saw: a fixed share of a split's classes
(`held_out_classes`, chosen by name before any result) is taken out of training and selection, the
probe is fitted and selected on the remaining classes exactly as any probe is, and the
out-of-distribution cut is calibrated on their validation rows so that `keep` of them are kept.
On test: the share of held-out-class images rejected, the share of known-class images kept, and
the AUROC of the score (unknown = positive), for each score of `plankdiff.probe.ood`.

No test label enters any choice: the held-out classes follow from the class names, the probe and
its pair from known-class validation rows, the cut from the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd

from plankdiff.choices import OODScore
from plankdiff.data.lineage import log_readout
from plankdiff.data.splits import Split
from plankdiff.features.store import FeatureStore
from plankdiff.probe.ood import (
    MahalanobisScorer,
    calibrate_threshold,
    energy_score,
    held_out_classes,
    open_set_split,
    rejection_metrics,
    unknown_split,
)
from plankdiff.probe.protocol import DEFAULT_KEEP, HOLD_OUT_EVERY
from plankdiff.probe.run import ProbeResult, check_lineage, probe_features, selected_features
from plankdiff.provenance import write_json

OOD_SCORES: tuple[str, ...] = get_args(OODScore)
OPEN_SET_FILE = "open_set.json"


@dataclass
class OpenSetResult:
    held_out: list[str]
    probe: ProbeResult  # fitted, selected and tested on the known classes only
    table: (
        pd.DataFrame
    )  # one row per score: auroc, unknown_rejected, known_kept, threshold, n_known, n_unknown


def open_set_scores(
    store: FeatureStore,
    split: Split,
    *,
    held_out: Sequence[str] | None = None,
    every: int = HOLD_OUT_EVERY,
    keep: float = DEFAULT_KEEP,
    seed: int = 0,
    out: Path | None = None,
    config: dict | None = None,
    transductive: bool = False,
    **probe_arguments,
) -> OpenSetResult:
    """`held_out` (default: `held_out_classes(split.classes, every=every)`) kept out of the probe;
    the linear probe's Mahalanobis distance and energy scored on known and held-out test images."""
    held_out = list(held_out) if held_out is not None else held_out_classes(split.classes, every=every)
    known, unknown_rows = open_set_split(split, held_out)
    if len(known.classes) < 2:
        raise ValueError(f"split {split.name}: fewer than 2 classes are left after holding out {held_out}")
    if not len(unknown_rows):
        raise ValueError(f"split {split.name}: no test images of the held-out classes {held_out}")
    unknown = unknown_split(split, unknown_rows)
    check_lineage(store, unknown, ("test",), transductive=transductive)
    probe = probe_features(
        store, known, seed=seed, out=out, config=config, transductive=transductive, **probe_arguments
    )
    if probe.classifier is None:
        raise ValueError(
            "open-set scores read a linear probe's standardisation and logits: use protocol linear"
        )
    with_size = bool(probe_arguments.get("with_size", False))

    def features(rows: np.ndarray) -> np.ndarray:
        return selected_features(store, probe.selected, rows, with_size=with_size)

    x = {part: features(known.indices(part)) for part in ("train", "val", "test")}
    x_unknown = features(unknown_rows)
    log_readout(store.dataset(), unknown.name, {"features": str(store.root), "pair": probe.selected_pair})
    mahalanobis = MahalanobisScorer.for_classifier(probe.classifier, x["train"], known.labels("train"))
    scorers = {
        "mahalanobis": mahalanobis.score,
        "energy": lambda v: energy_score(probe.classifier.logits(v)),
    }
    rows = []
    for name in OOD_SCORES:
        score = scorers[name]
        threshold = calibrate_threshold(score(x["val"]), keep=keep)
        rows.append({"score": name, **rejection_metrics(score(x["test"]), score(x_unknown), threshold)})
    table = pd.DataFrame(rows)
    if out is not None:
        write_json(
            Path(out) / OPEN_SET_FILE,
            {
                "held_out": held_out,
                "keep": keep,
                "split": split.name,
                "known_split": known.name,
                "pair": probe.selected_pair,
                "scores": rows,
                "how": "probe fitted and selected on the known classes' train and validation rows; each score's "
                "cut keeps `keep` of their validation images; held-out classes' test images are the unknowns",
            },
        )
    return OpenSetResult(held_out=held_out, probe=probe, table=table)


__all__ = ["OOD_SCORES", "OpenSetResult", "open_set_scores"]
