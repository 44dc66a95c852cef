"""The study's report assembly from plain rows, without running a study."""

from __future__ import annotations

import math

import pytest

from plankdiff.report.study import StudyRows, headline_rows, partial_note, what_varies


def probe_row(seed: int, experiment: str, method: str, accuracy: float, shift: float | None = None) -> dict:
    row = {
        "seed": seed,
        "experiment": experiment,
        "method": method,
        "pair": f"t{seed}",
        "test": {"accuracy": accuracy, "macro_f1": accuracy / 2},
    }
    if shift is not None:
        row["shift"] = {"accuracy": shift, "macro_f1": shift / 2}
    return row


def test_headline_rows_average_over_seeds_and_add_the_shift_and_the_drop():
    rows = StudyRows(
        per_seed=[
            probe_row(0, "zoolake/a→b", "diffusion", 0.6, shift=0.5),
            probe_row(1, "zoolake/a→b", "diffusion", 0.8, shift=0.5),
            probe_row(0, "ndsb/long-tailed", "simclr", 0.4),
        ],
        efficiency=[
            {"method": "diffusion", "seed": 0, "fraction": 0.5, "accuracy": 0.3},
            {"method": "diffusion", "seed": 1, "fraction": 0.5, "accuracy": 0.5},
        ],
        kmeans=[
            {
                "method": "diffusion",
                "seed": 0,
                "pair": "p",
                "nmi": 0.2,
                "ari": 0.1,
                "hungarian_accuracy": 0.3,
                "purity": 0.4,
            }
        ],
        shift=[],
        open_set=[],
    )
    out = {
        (r["experiment"], r["setting"], r["method"], r["metric"]): r
        for r in headline_rows(rows, varies="v", headline_dataset="ndsb")
    }
    accuracy = out[("zoolake/a→b", "in period / source", "diffusion", "accuracy")]
    assert accuracy["mean"] == pytest.approx(0.7) and accuracy["std"] == pytest.approx(math.sqrt(0.02))
    assert accuracy["n_seeds"] == 2 and accuracy["pair"] == "t0, t1"
    assert out[("zoolake/a→b", "under shift", "diffusion", "accuracy")]["mean"] == pytest.approx(0.5)
    assert out[("zoolake/a→b", "drop", "diffusion", "drop_accuracy")]["mean"] == pytest.approx(0.2)
    single = out[("ndsb/long-tailed", "in distribution", "simclr", "macro_f1")]
    assert single["mean"] == pytest.approx(0.2) and math.isnan(single["std"])  # one seed: no spread
    assert out[("ndsb/label efficiency", "50% of train labels", "diffusion", "accuracy")][
        "mean"
    ] == pytest.approx(0.4)
    clustered = out[
        (
            "ndsb/k-means (K = classes)",
            "test images, pair selected by the probe on validation",
            "diffusion",
            "nmi",
        )
    ]
    assert clustered["varies"] == "v, k-means initialisation"


def test_what_varies_and_the_partial_note():
    assert what_varies(False) == "backbone seed, probe seed"
    assert what_varies(True) == "backbone seed, probe seed, partition"
    assert partial_note([0, 1, 2], [0, 1, 2]) == []
    assert partial_note([0, 1, 2], [0]) == [
        "Partial study: seeds 0 of 3 planned are complete; rerun the same command to resume the rest."
    ]
