"""`plankdiff probe FEATURES --split … --protocol linear|knn`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from plankdiff.choices import Loss, Protocol
from plankdiff.cli_support import fail, load_split, switch

console = Console()


def probe_command(
    features: Path = typer.Argument(..., help="feature store folder"),
    split: str = typer.Option(..., "--split", help="split name on the store's dataset, e.g. long-tailed-s0"),
    protocol: Protocol = typer.Option(
        "linear", "--protocol", help="linear: batched linear probes; knn: weighted k-NN on cosine similarity"
    ),
    loss: Loss = typer.Option(
        "ce",
        "--loss",
        help="linear probe loss: ce; class-balanced (effective-number weights, Cui et al. 2019); logit-adjusted (log-prior offsets, for long tails)",
    ),
    out: Path = typer.Option(
        None, "--out", help="result folder (default: FEATURES/probe-<split>-<protocol>)"
    ),
    with_size: bool = switch(False, "--with-size", help="append log original width, height, area"),
    fuse_top: int = typer.Option(
        0, "--fuse-top", min=0, help="also try the top-k pairs concatenated (0: no)"
    ),
    shifted: list[str] = typer.Option(
        [], "--shifted", help="FEATURES:SPLIT of a shifted test set (repeatable; default: none)"
    ),
    seed: int = typer.Option(0, "--seed", help="random seed of the probe fits"),
) -> None:
    """Fit probes on every pair, select on validation, report the selected pair on test (once).

    Example: plankdiff probe cache/features/ddpm --split long-tailed-s0 --protocol linear --loss logit-adjusted
    """
    from plankdiff.probe.run import Shifted, probe_features

    store = _open_store(features)
    try:  # the store's own dataset, refused when it was prepared again since
        dataset = store.dataset()
    except (ValueError, FileNotFoundError) as error:
        fail(console, error)
    chosen = load_split(console, dataset, split)
    shifts = []
    for spec in shifted:
        path, _, name = spec.rpartition(":")
        if not path or not name:
            fail(console, f"--shifted {spec!r}: give FEATURES:SPLIT")
        other = _open_store(Path(path))
        shifts.append(
            Shifted(
                name=f"{other.info['dataset']}:{name}",
                store=other,
                split=load_split(console, other.dataset(), name),
            )
        )
    out = out or features / f"probe-{split}-{protocol}"
    try:
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
    except ValueError as error:
        fail(console, error)
    test = result.test
    console.print(
        f"selected [bold]{result.selected_pair}[/bold] on validation (macro-F1 {result.val['macro_f1']:.3f}); "
        f"test accuracy {test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f} → {out}"
    )
    for name, metrics in result.shifted.items():
        console.print(
            f"  shifted {name}: accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}"
        )


def _open_store(path: Path):
    from plankdiff.features.store import FeatureStore

    if not (path / "store.json").is_file():
        fail(
            console,
            f"{path}: not a feature store (no store.json); make one with `plankdiff features extract`",
        )
    return FeatureStore(path)
