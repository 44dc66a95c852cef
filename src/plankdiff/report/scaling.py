"""Compute-scaling curves: the same study at several training budgets, one line per method.

Each results folder is one finished (or partial) study run at one FLOP budget (`max_tflops` in
its experiment file, e.g. the shipped `scaling-low`, `cpu` and `scaling-high`). The curve of a
method joins its headline test figures (mean ± std over the backbone seeds each study ran) at
the training FLOPs its backbones actually used (`study.json` budgets, mean over seeds). Raw
pixels train nothing: they are drawn as a horizontal floor. Points are measurements only: the
table never fills a level a study did not run, and nothing is extrapolated.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from plankdiff.features.raw import RAW_METHOD as RAW
from plankdiff.report.figures import COLOURS, _png, seed_errorbars

COLUMNS = [
    "study",
    "experiment",
    "method",
    "metric",
    "tflops",
    "mean",
    "std",
    "n_seeds",
    "varies",
]


def _budget_tflops(study: dict, method: str, pretrain: str) -> float | None:
    """Mean training TFLOPs of `method`'s backbones (over seeds) on the experiment's pre-training set."""
    values = []
    for entry in study.get("budgets") or []:
        name, _, key = str(entry.get("method", "")).partition(" (")
        key = key.rstrip(")")
        if name == method and key == pretrain and entry.get("tflops") is not None:
            values.append(float(entry["tflops"]))
    return float(np.mean(values)) if values else None


def scaling_table(results: Sequence[Path], *, setting: str = "in distribution") -> pd.DataFrame:
    """One row per (study, experiment, method, metric): the headline mean ± std and the training TFLOPs."""
    rows = []
    for folder in map(Path, results):
        study_file, headline_file = folder / "study.json", folder / "headline.csv"
        for needed in (study_file, headline_file):
            if not needed.exists():
                raise FileNotFoundError(f"{needed}: not found; is {folder} a study's results folder?")
        study = json.loads(study_file.read_text())
        headline = pd.read_csv(headline_file)
        chosen = headline[
            (headline["setting"] == setting) & headline["metric"].isin(["accuracy", "macro_f1"])
        ]
        for row in chosen.itertuples(index=False):
            pretrain = _pretrain_key(study, folder, row.experiment)
            tflops = 0.0 if row.method == RAW else _budget_tflops(study, row.method, pretrain)
            rows.append(
                {
                    "study": study.get("name", folder.name),
                    "experiment": row.experiment,
                    "method": row.method,
                    "metric": row.metric,
                    "tflops": tflops,
                    "mean": float(row.mean),
                    "std": float(row.std),
                    "n_seeds": int(row.n_seeds),
                    "varies": row.varies,
                }
            )
    if not rows:
        raise ValueError(f"no {setting!r} accuracy or macro-F1 rows in {', '.join(map(str, results))}")
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(["experiment", "method", "metric", "tflops"])


def _pretrain_key(study: dict, folder: Path, experiment: str) -> str:
    """The pre-training set whose backbones `experiment` reads, so that its point sits at their
    FLOPs: `pretrained_on` in study.json; a study written before that key existed is read only
    when all its backbones share one set (there is then no other to pick)."""
    recorded = study.get("pretrained_on") or {}
    if experiment in recorded:
        return recorded[experiment]
    keys = {str(e.get("method", "")).partition(" (")[2].rstrip(")") for e in study.get("budgets") or []}
    if len(keys) != 1:
        raise ValueError(
            f"{folder}: its backbones were pre-trained on {len(keys)} sets ({', '.join(sorted(keys)) or 'none'}) "
            f"and its study.json does not say which one {experiment!r} reads (no `pretrained_on`: "
            "written before plankdiff recorded it; run the study again to rewrite its report)"
        )
    return keys.pop()


def scaling_figure(table: pd.DataFrame, experiment: str) -> bytes:
    """Accuracy and macro-F1 against training TFLOPs (log axis), one line per method, ±std bars."""
    from matplotlib.figure import Figure

    part = table[table["experiment"] == experiment]
    if part.empty:
        raise ValueError(f"no rows for experiment {experiment!r}; have {sorted(set(table['experiment']))}")
    fig = Figure(figsize=(9, 3.6))
    trained = part[part["tflops"] > 0]
    # One colour per method in both panels.
    colours = {m: COLOURS[i % len(COLOURS)] for i, m in enumerate(sorted(set(part["method"])))}
    for axis, metric in zip(fig.subplots(1, 2), ("accuracy", "macro_f1"), strict=True):
        for method, group in part[part["metric"] == metric].groupby("method"):
            colour = colours[method]
            group = group.sort_values("tflops")
            if method == RAW:  # no training: a floor across the budgets
                axis.axhline(100 * group["mean"].mean(), color="grey", linestyle=":", label="raw pixels")
                continue
            label = f"{method} (1 seed)" if (group["n_seeds"] == 1).all() else method
            axis.plot(group["tflops"], 100 * group["mean"], marker="o", color=colour, label=label)
            seed_errorbars(
                axis,
                group["tflops"],
                100 * group["mean"],
                100 * group["std"],
                group["n_seeds"],
                ecolor=colour,
                capsize=3,
            )
        axis.set_xscale("log")
        if not trained.empty:
            axis.set_xlim(trained["tflops"].min() / 1.5, trained["tflops"].max() * 1.5)
        axis.set_xlabel("training TFLOPs per backbone (log scale)")
        axis.set_ylabel(f"test {metric.replace('_', '-')} (%)")
        axis.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    fig.suptitle(f"{experiment}: test figures against training compute (mean ± std over backbone seeds)")
    return _png(fig)
