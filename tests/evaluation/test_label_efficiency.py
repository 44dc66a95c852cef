"""The label-efficiency figure: ± a standard deviation over seeds, none (and "1 seed") for one."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.collections import LineCollection

from plankdiff.evaluation.label_efficiency import plot_label_efficiency


def curve(seeds: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"method": m, "seed": s, "fraction": f, "accuracy": 0.5 + f / 4 + s / 100}
            for m in ("diffusion", "simclr")
            for s in seeds
            for f in (0.1, 0.5, 1.0)
        ]
    )


def bars_and_legend(frame: pd.DataFrame, out: Path) -> tuple[int, list[str]]:
    fig = plot_label_efficiency(frame, out)
    assert out.exists()
    ax = fig.axes[0]
    segments = sum(len(c.get_segments()) for c in ax.collections if isinstance(c, LineCollection))
    return segments, [t.get_text() for t in ax.get_legend().get_texts()]


def test_one_seed_draws_no_error_bar_and_says_so(tmp_path: Path):
    segments, legend = bars_and_legend(curve([0]), tmp_path / "one.png")
    assert segments == 0
    assert legend == ["diffusion (1 seed)", "simclr (1 seed)"]


def test_several_seeds_draw_a_bar_at_every_fraction(tmp_path: Path):
    segments, legend = bars_and_legend(curve([0, 1, 2]), tmp_path / "three.png")
    assert segments == 2 * 3
    assert legend == ["diffusion", "simclr"]
