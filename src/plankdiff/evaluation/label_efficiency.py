"""Label efficiency: the selected features probed with a fraction of the training labels.

Only the probe sees fewer labels; the backbone is the one pre-trained for the full study. Subsets
nest across fractions (the first ceil(f · n_c) images of each class's seeded permutation), so a
curve compares like with like. Hyper-parameters are selected on the full validation rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from plankdiff.data.splits import Split
from plankdiff.features.store import FeatureStore
from plankdiff.probe.linear import fit_single
from plankdiff.probe.run import load_pairs


def nested_fraction(split: Split, fraction: float, seed: int) -> np.ndarray:
    """The first ceil(fraction · n_c) of each class's seeded permutation: subsets nest across fractions."""
    rng = np.random.default_rng(seed)
    train = split.indices("train")
    labels = split.targets[train]
    chosen = []
    for c in np.unique(labels):
        members = train[labels == c][rng.permutation(int((labels == c).sum()))]
        chosen.append(members[: max(1, int(np.ceil(fraction * len(members))))])
    return np.sort(np.concatenate(chosen))


def label_curve(
    store: FeatureStore, split: Split, pairs: list[str], fractions, seed: int, probe_options: dict
) -> list[dict]:
    """Test accuracy of a probe on `pairs` (concatenated) for each fraction of the training labels."""
    out = []
    for fraction in fractions:
        train = nested_fraction(split, fraction, seed)
        rows = np.concatenate([train, split.indices("val"), split.indices("test")])
        positions = store.positions(rows)
        x = np.concatenate(list(load_pairs(store, pairs, positions, with_size=False).values()), axis=1)
        labels = split.targets[rows]
        n_train, n_val = len(train), len(split.indices("val"))
        grid = fit_single(
            x,
            labels,
            train=np.arange(n_train),
            val=np.arange(n_train, n_train + n_val),
            n_classes=len(split.classes),
            seed=seed,
            **probe_options,
        )
        test = np.arange(n_train + n_val, len(rows))
        predicted = grid.classifier().predict(x[test])
        out.append(
            {
                "fraction": fraction,
                "train_images": int(n_train),
                "accuracy": float((predicted == labels[test]).mean()),
            }
        )
    return out


def plot_label_efficiency(frame: pd.DataFrame, out: Path):
    """Test accuracy against the labelled share, one line per method, ± one standard deviation over
    seeds where there are two or more ("1 seed" in the legend where there is one). Returns the figure."""
    from matplotlib.figure import Figure

    from plankdiff.report.figures import seed_errorbars

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for method, group in frame.groupby("method"):
        stats = group.groupby("fraction")["accuracy"].agg(["mean", "std", "count"]).reset_index()
        x, mean = stats["fraction"] * 100, stats["mean"] * 100
        one = (stats["count"] == 1).all()
        (line,) = ax.plot(x, mean, marker="o", label=f"{method} (1 seed)" if one else method)
        seed_errorbars(ax, x, mean, stats["std"] * 100, stats["count"], ecolor=line.get_color(), capsize=2)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training images per class (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    return fig


__all__ = ["label_curve", "nested_fraction", "plot_label_efficiency"]
