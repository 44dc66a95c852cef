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
            # "supervised (own head)" is the supervised network's own classifier: its FLOPs
            trained_as = row.method.partition(" (")[0]
            tflops = 0.0 if row.method == RAW else _budget_tflops(study, trained_as, pretrain)
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


def scaling_markdown(table: pd.DataFrame) -> str:
    """Per experiment and metric, one row per method and one column per study (its median
    training TFLOPs in the header): "mean ± std (n)" in %, "mean (1)" for a single seed, then
    the method's gap to the DDPM at that level in points (positive: ahead of the DDPM)."""
    lines = [
        "Cells: test figure in %, mean ± std over backbone seeds (number of seeds, then points "
        "ahead of the DDPM at the same level; negative: behind it).",
        "",
    ]
    for experiment in sorted(set(table["experiment"])):
        part = table[table["experiment"] == experiment]
        trained = part[part["tflops"] > 0]
        levels = trained.groupby("study")["tflops"].median().sort_values()
        header = [f"{study} ({tflops:.0f} TFLOP)" for study, tflops in levels.items()]
        for metric in ("accuracy", "macro_f1"):
            rows = part[part["metric"] == metric]
            ddpm = rows[rows["method"] == "diffusion"].set_index("study")["mean"]
            lines += [
                f"### {experiment}, test {metric.replace('_', '-')} (%)",
                "",
                "| method | " + " | ".join(header) + " |",
                "|---|" + "---|" * len(header),
            ]
            for method, group in rows.groupby("method", sort=True):
                by_study = group.set_index("study")
                cells = []
                for study in levels.index:
                    if study not in by_study.index:
                        cells.append("")
                        continue
                    row = by_study.loc[study]
                    spread = "" if row["n_seeds"] < 2 else f" ± {100 * row['std']:.1f}"
                    gap = ""
                    if method != "diffusion" and study in ddpm.index:
                        gap = f", {100 * (row['mean'] - ddpm[study]):+.1f}"
                    cells.append(f"{100 * row['mean']:.1f}{spread} ({row['n_seeds']}{gap})")
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def curve_methods(part: pd.DataFrame) -> list[str]:
    """The trained methods of `part` measured at two or more budgets, less the supervised
    network's own head (a row of the table, not a backbone of its own)."""
    levels = part[part["tflops"] > 0].groupby("method")["study"].nunique()
    return sorted(m for m, n in levels.items() if n >= 2 and " (" not in m)


def scaling_figure(table: pd.DataFrame, experiment: str) -> bytes:
    """Accuracy and macro-F1 against training TFLOPs (log axis), one line per method measured at
    two or more budgets, ±std bars where a level has several seeds, raw pixels as a floor. A
    method measured at one budget only (e.g. BYOL, which only the middle level trains) and the
    supervised network's own head stay in the table, not on the curves: one point is no curve."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    part = table[table["experiment"] == experiment]
    if part.empty:
        raise ValueError(f"no rows for experiment {experiment!r}; have {sorted(set(table['experiment']))}")
    curves = curve_methods(part)
    fig = Figure(figsize=(10, 3.8))
    trained = part[part["method"].isin(curves)]
    # One colour per method in both panels.
    colours = {m: COLOURS[i % len(COLOURS)] for i, m in enumerate(curves)}
    for axis, metric in zip(fig.subplots(1, 2), ("accuracy", "macro_f1"), strict=True):
        rows = part[part["metric"] == metric]
        floor = rows[rows["method"] == RAW]
        if not floor.empty:  # no training: a floor across the budgets
            axis.axhline(100 * floor["mean"].mean(), color="grey", linestyle=":", label="raw pixels")
        for method in curves:
            group = rows[rows["method"] == method].sort_values("tflops")
            colour = colours[method]
            seeds = "/".join(str(n) for n in group["n_seeds"])
            axis.plot(
                group["tflops"],
                100 * group["mean"],
                marker="o",
                color=colour,
                label=f"{method} (seeds {seeds})",
            )
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
            # one tick per study at its methods' median FLOPs (8, 25, 100), not at powers of ten:
            # methods overshoot a budget by up to one training step, so their points sit near it
            budgets = sorted({round(float(t)) for t in trained.groupby("study")["tflops"].median()})
            axis.set_xticks(budgets, [str(b) for b in budgets])
            axis.xaxis.set_minor_locator(NullLocator())
        axis.set_xlabel("training TFLOPs per backbone (log scale)")
        axis.set_ylabel(f"test {metric.replace('_', '-')} (%)")
        axis.grid(alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.07, right=0.78, bottom=0.15, top=0.88, wspace=0.28)
    fig.suptitle(f"{experiment}: test figures against training compute (mean ± std over backbone seeds)")
    return _png(fig)
