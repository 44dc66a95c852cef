"""The background normalisation ablation (issue #19), read side by side: for each experiment the
study repeated without background normalisation (`ablations: {background: true}`), each method's
test scores with it (the experiment as planned) and without it (its repeat, on the same images,
with backbones pre-trained on the unnormalised preparation), and the difference.

The pairs come from `study.json`'s `ablations` (ablated experiment → the experiment it repeats,
written by `Study._report`); the scores from `headline.csv` (mean ± std over seeds).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from plankdiff.report.tables import format_score, read_headline

ABLATION_FILE = "background_ablation.md"
ABLATION_TITLE = "Background normalisation ablation"
ABLATION_CAPTION = (
    "Each experiment with background and contrast normalisation (the default preparation) and again without "
    "it: the images prepared with `background: none` and every other setting the same, every method's "
    "backbone pre-trained again on that preparation (same images, seed and budget), the probe fitted, "
    "selected and scored on the same images, the shifted test set included. Difference: without minus with, "
    "of the means over seeds, in points."
)
# headline metric → its label in the table (both are percentages, `format_score`)
METRICS = {"accuracy": "accuracy", "macro_f1": "macro F1"}


def ablation_summary(headline: pd.DataFrame, ablations: dict[str, str]) -> pd.DataFrame:
    """One row per (experiment, method, setting) scored both with and without: experiment (the one
    with normalisation), method, setting, then per metric "with", "without" and "difference (pp)".
    Settings whose metrics differ between the two (none in a study) and drops are left out."""
    columns = ["experiment", "method", "setting"] + [
        f"{label} {part}"
        for label in METRICS.values()
        for part in ("with (%)", "without (%)", "difference (pp)")
    ]
    frame = headline[headline["metric"].isin(list(METRICS))]
    rows = []
    for without, with_ in ablations.items():
        normalised = frame[frame["experiment"] == with_]
        repeated = frame[frame["experiment"] == without].set_index(["method", "setting", "metric"])
        for (method, setting), group in normalised.groupby(["method", "setting"], sort=False):
            row = {"experiment": with_, "method": method, "setting": setting}
            for metric, label in METRICS.items():
                mine = group[group["metric"] == metric]
                if mine.empty or (method, setting, metric) not in repeated.index:
                    break
                other = repeated.loc[(method, setting, metric)]
                a, b = float(mine["mean"].iloc[0]), float(other["mean"])
                row[f"{label} with (%)"] = format_score(metric, a, float(mine["std"].iloc[0]))
                row[f"{label} without (%)"] = format_score(metric, b, float(other["std"]))
                row[f"{label} difference (pp)"] = "" if math.isnan(a - b) else f"{(b - a) * 100:+.1f}"
            else:
                rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def ablation_table(results_dir: Path) -> pd.DataFrame | None:
    """The side-by-side table of a results folder, or None when its study ran no ablation."""
    results_dir = Path(results_dir)
    study = results_dir / "study.json"
    if not study.is_file() or not (results_dir / "headline.csv").is_file():
        return None
    ablations = json.loads(study.read_text(encoding="utf-8")).get("ablations") or {}
    if not ablations:
        return None
    headline = read_headline(results_dir / "headline.csv")
    headline["std"] = headline["std"].astype(float)
    return ablation_summary(headline, ablations)


__all__ = ["ABLATION_CAPTION", "ABLATION_FILE", "ABLATION_TITLE", "ablation_summary", "ablation_table"]
