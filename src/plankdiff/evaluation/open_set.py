"""Open-set rejection measured with classes the probe never saw: a fixed share of a split's classes
(`held_out_classes`, chosen by name before any result) is taken out of training and selection, the
probe is fitted and selected on the remaining classes exactly as any probe is, and the
out-of-distribution cut is calibrated on their validation rows so that `keep` of them are kept.
For each score of `plankdiff.probe.ood`, two rows: `part` "val" (the held-out classes' validation
images against the known classes' validation images, the cut's own calibration rows: what a score
is chosen on) and `part` "test" (held-out classes' test images against known test images: the
measurement) — each with the share of held-out-class images rejected, of known images kept, and
the AUROC of the score (unknown = positive).

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
    calibrate_threshold,
    fit_scorer,
    held_out_classes,
    held_out_rows,
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
    # one row per (score, part): auroc, unknown_rejected, known_kept, threshold, n_known, n_unknown
    table: pd.DataFrame


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
    every open-set score of the linear probe on known and held-out validation and test images."""
    held_out = list(held_out) if held_out is not None else held_out_classes(split.classes, every=every)
    known, unknown_rows = open_set_split(split, held_out)
    if len(known.classes) < 2:
        raise ValueError(f"split {split.name}: fewer than 2 classes are left after holding out {held_out}")
    if not len(unknown_rows):
        raise ValueError(f"split {split.name}: no test images of the held-out classes {held_out}")
    unknown_val_rows = held_out_rows(split, held_out, "val")
    if not len(unknown_val_rows):
        raise ValueError(f"split {split.name}: no validation images of the held-out classes {held_out}")
    unknown = unknown_split(split, unknown_rows, unknown_val_rows)
    check_lineage(store, unknown, ("val", "test"), transductive=transductive)
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
    x_unknown = {part: features(unknown.indices(part)) for part in ("val", "test")}
    log_readout(store.dataset(), unknown.name, {"features": str(store.root), "pair": probe.selected_pair})
    rows = []
    for name in OOD_SCORES:
        score = fit_scorer(name, probe.classifier, x["train"], known.labels("train")).score
        known_val = score(x["val"])
        threshold = calibrate_threshold(known_val, keep=keep)
        for part, known_scores in (("val", known_val), ("test", score(x["test"]))):
            metrics = rejection_metrics(known_scores, score(x_unknown[part]), threshold)
            rows.append({"score": name, "part": part, **metrics})
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
                "cut keeps `keep` of their validation images; held-out classes' validation images are the "
                "unknowns of part val (for choosing a score), their test images those of part test",
            },
        )
    return OpenSetResult(held_out=held_out, probe=probe, table=table)


__all__ = ["OOD_SCORES", "OpenSetResult", "open_set_scores"]
