"""`plankdiff probe FEATURES --split … --protocol linear|knn`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from plankdiff.data.splits import Split
from plankdiff.features.store import FeatureStore
from plankdiff.probe.run import Shifted, probe_features

console = Console()


def probe_command(
    features: Path = typer.Argument(..., help="feature store folder"),
    split: str = typer.Option(..., "--split", help="split name on the store's dataset"),
    protocol: str = typer.Option("linear", "--protocol", help="linear | knn"),
    loss: str = typer.Option("ce", "--loss", help="ce | class-balanced | logit-adjusted"),
    out: Path = typer.Option(
        None, "--out", help="result folder (default: FEATURES/probe-<split>-<protocol>)"
    ),
    with_size: bool = typer.Option(False, "--with-size", help="append log original width, height, area"),
    fuse_top: int = typer.Option(0, "--fuse-top", help="also try the top-k pairs concatenated"),
    shifted: list[str] = typer.Option(
        [], "--shifted", help="FEATURES:SPLIT of a shifted test set (repeatable)"
    ),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Fit probes on every pair, select on validation, report the selected pair on test (once)."""
    store = FeatureStore(features)
    chosen = Split.load(store.dataset(), split)
    shifts = []
    for spec in shifted:
        path, _, name = spec.rpartition(":")
        other = FeatureStore(Path(path))
        shifts.append(
            Shifted(
                name=f"{other.info['dataset']}:{name}",
                store=other,
                split=Split.load(other.dataset(), name),
            )
        )
    out = out or features / f"probe-{split}-{protocol}"
    result = probe_features(
        store,
        chosen,
        protocol=protocol,
        loss=loss,
        with_size=with_size,
        fuse_top=fuse_top,
        shifted=shifts,
        seed=seed,
        out=out,
    )
    test = result.test
    console.print(
        f"selected [bold]{result.selected_pair}[/bold] on validation (macro-F1 {result.val['macro_f1']:.3f}); "
        f"test accuracy {test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f} → {out}"
    )
    for name, metrics in result.shifted.items():
        console.print(
            f"  shifted {name}: accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}"
        )
