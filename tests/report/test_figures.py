"""Report figures: error bars are a standard deviation over seeds, so a single seed gets none."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from matplotlib.collections import LineCollection

from plankdiff.report import figures


def headline(n_seeds: int) -> pd.DataFrame:
    std = math.nan if n_seeds == 1 else 0.02
    return pd.DataFrame(
        [
            ["ndsb/long-tailed", setting, method, "p", "accuracy", 0.6, std, n_seeds]
            for setting in ("in distribution", "under shift")
            for method in ("diffusion", "simclr")
        ],
        columns=["experiment", "setting", "method", "pair", "metric", "mean", "std", "n_seeds"],
    )


def drawn(monkeypatch, rows: pd.DataFrame):
    captured = []
    monkeypatch.setattr(figures, "_png", lambda fig: captured.append(fig) or b"png")
    figures.experiment_figure(rows, "ndsb/long-tailed")
    (ax,) = [a for a in captured[0].axes if a.get_visible()]
    return ax


def error_segments(ax) -> int:
    return sum(len(c.get_segments()) for c in ax.collections if isinstance(c, LineCollection))


@pytest.mark.parametrize(("n_seeds", "bars", "under"), [(1, 0, "1 seed"), (3, 4, "n=3")])
def test_an_experiment_figure_draws_error_bars_only_over_several_seeds(monkeypatch, n_seeds, bars, under):
    ax = drawn(monkeypatch, headline(n_seeds))
    assert error_segments(ax) == bars
    assert all(tick.get_text().endswith(under) for tick in ax.get_xticklabels())
