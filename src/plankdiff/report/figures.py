"""Figures the report draws from the results folder's data (headline rows, training logs, coverage curves).

Each is returned as PNG bytes for embedding: the report is one file. Matplotlib's object API (no
pyplot) keeps the caller's backend untouched.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from plankdiff.deploy.calibrate import CoverageCurve
from plankdiff.report.tables import METRICS

COLOURS = ("#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5")


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def seed_errorbars(ax, x, mean, std, n_seeds, **style) -> None:
    """± one standard deviation over replicates, drawn only where there are two or more: a single
    seed has no spread, and a zero-length bar with its caps would read as a measured zero."""
    keep = np.asarray(n_seeds) > 1
    if keep.any():
        ax.errorbar(
            np.asarray(x, float)[keep],
            np.asarray(mean, float)[keep],
            yerr=np.asarray(std, float)[keep],
            fmt="none",
            **style,
        )


def seeds_label(n: int) -> str:
    """What a figure writes for a value's replicates: "1 seed" says why it has no error bar."""
    return "1 seed" if n == 1 else f"n={n}"


def experiment_figure(rows: pd.DataFrame, experiment: str) -> bytes:
    """One panel per metric, methods side by side along x, one bar per setting; error bars are one
    standard deviation over replicates (none with a single replicate: "1 seed" under the method),
    n written under each method."""
    from matplotlib.figure import Figure

    rows = rows[rows["experiment"] == experiment]
    metrics = [m for m in METRICS if m in set(rows["metric"])]
    metrics += sorted(set(rows["metric"]) - set(metrics))
    methods = list(dict.fromkeys(rows["method"]))
    settings = list(dict.fromkeys(rows["setting"]))
    # At most two panels a row: four side by side shrink to illegible on a phone.
    columns = min(2, len(metrics))
    lines = -(-len(metrics) // columns)
    fig = Figure(figsize=(4.4 * columns, 3.4 * lines), layout="constrained")
    axes = fig.subplots(lines, columns, squeeze=False).ravel()
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    width = 0.8 / len(settings)
    for ax, metric in zip(axes, metrics, strict=False):
        label, percent = METRICS.get(metric, (metric, False))
        scale = 100.0 if percent else 1.0
        for k, setting in enumerate(settings):
            hits = rows[(rows["metric"] == metric) & (rows["setting"] == setting)].set_index("method")
            x = np.array([i for i, m in enumerate(methods) if m in hits.index], dtype=float)
            if not len(x):
                continue
            present = [m for m in methods if m in hits.index]
            mean = hits.loc[present, "mean"].to_numpy(float) * scale
            std = np.nan_to_num(hits.loc[present, "std"].to_numpy(float)) * scale
            at = x + (k - (len(settings) - 1) / 2) * width
            ax.bar(at, mean, width, color=COLOURS[k % len(COLOURS)], label=setting)
            seed_errorbars(ax, at, mean, std, hits.loc[present, "n_seeds"], ecolor="black", capsize=3)
        n = rows[rows["metric"] == metric].groupby("method")["n_seeds"].max()
        ax.set_xticks(
            range(len(methods)),
            [f"{m}\n{seeds_label(int(n.get(m, 0)))}" for m in methods],
            rotation=30,
            ha="right",
            fontsize=8,
        )
        ax.set_title(label, fontsize=10)
        ax.axhline(0, color="#888", linewidth=0.6)
        ax.grid(axis="y", alpha=0.3)
    if len(settings) > 1:
        axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(experiment, fontsize=11)
    return _png(fig)


def read_loss_log(path: Path) -> pd.DataFrame:
    """A run's `metrics.jsonl` (step, loss, …) as a frame; empty when nothing was logged."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return pd.DataFrame(records, columns=None if records else ["step", "loss"])


def loss_figure(logs: dict[str, dict[int, pd.DataFrame]], title: str) -> bytes:
    """One panel per method (losses of different objectives do not share a scale), one line per
    seed; x is the optimisation step."""
    from matplotlib.figure import Figure

    methods = list(logs)
    columns = min(3, len(methods))
    lines = -(-len(methods) // columns)
    fig = Figure(figsize=(3.6 * columns, 2.6 * lines), layout="constrained")
    axes = np.atleast_1d(fig.subplots(lines, columns, squeeze=False).ravel())
    for ax, method in zip(axes, methods, strict=False):
        for k, (seed, log) in enumerate(sorted(logs[method].items())):
            if len(log):
                ax.plot(log["step"], log["loss"], color=COLOURS[k % len(COLOURS)], label=f"seed {seed}")
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("training loss", fontsize=8)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax.transAxes)
    for ax in axes[len(methods) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    return _png(fig)


def coverage_figure(curves: dict[str, CoverageCurve], title: str, *, target: float) -> bytes:
    """Accuracy of the kept test images against the share kept, one line per method, as the top-1
    probability threshold rises; the widest coverage at which accuracy reaches `target` is marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 3.6), layout="constrained")
    ax = fig.subplots()
    for k, (method, curve) in enumerate(curves.items()):
        colour = COLOURS[k % len(COLOURS)]
        ax.plot(curve.coverage * 100, curve.accuracy * 100, color=colour, label=method, linewidth=1.4)
        widest = curve.widest_reaching(target)
        if widest is not None:
            x, y = curve.coverage[widest] * 100, curve.accuracy[widest] * 100
            ax.plot([x], [y], "o", color=colour, markersize=6)
            ax.annotate(
                f"{x:.0f} %", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8, color=colour
            )
    ax.axhline(target * 100, color="#888", linewidth=0.8, linestyle="--")
    ax.set_xlim(0, 101)
    ax.set_ylim(top=104)  # room for the mark's label at 100 %
    ax.set_xlabel("coverage: test images kept (%)", fontsize=9)
    ax.set_ylabel("accuracy of the kept images (%)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title, fontsize=10)
    return _png(fig)
