"""`plankdiff probe FEATURES --split … --protocol linear|knn`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from plankdiff.choices import Protocol
from plankdiff.cli_support import fail, load_split, switch
from plankdiff.probe.protocol import LOSSES, EvaluationProtocol

console = Console()
# The study's `protocol:` block and this command share one typed object and its defaults.
DEFAULTS = EvaluationProtocol()


def _known_losses(values: list[str]) -> list[str]:
    """typer takes no list of choices: the repeatable --loss is checked here, at parse time."""
    unknown = [value for value in values if value not in LOSSES]
    if unknown:
        raise typer.BadParameter(f"{unknown[0]!r} is not one of {', '.join(map(repr, LOSSES))}")
    return values


def probe_command(
    features: Path = typer.Argument(..., help="feature store folder"),
    split: str = typer.Option(..., "--split", help="split name on the store's dataset, e.g. long-tailed-s0"),
    protocol: Protocol = typer.Option(
        "linear", "--protocol", help="linear: batched linear probes; knn: weighted k-NN on cosine similarity"
    ),
    loss: list[str] = typer.Option(
        list(DEFAULTS.losses),
        "--loss",
        callback=_known_losses,
        help="probe loss, repeatable (checked against the protocol's losses): each is tried and the one that wins on validation is kept; ce; "
        "class-balanced (effective-number weights, Cui et al. 2019); logit-adjusted (log-prior offsets, "
        "for long tails)",
    ),
    out: Path = typer.Option(
        None, "--out", help="result folder (default: FEATURES/probe-<split>-<protocol>)"
    ),
    with_size: bool = switch(False, "--with-size", help="append log original width, height, area"),
    fuse_top: int = typer.Option(
        DEFAULTS.fuse_top, "--fuse-top", min=1, help="also try the top-k pairs concatenated (1: no fusion)"
    ),
    epochs: int = typer.Option(DEFAULTS.epochs, "--epochs", min=1, help="passes over the training rows"),
    min_steps: int = typer.Option(
        DEFAULTS.min_steps,
        "--min-steps",
        min=1,
        help="optimiser steps at least, whatever the training-set size",
    ),
    bootstrap: int = typer.Option(
        DEFAULTS.bootstrap, "--bootstrap", min=0, help="test resamples for the 95 % intervals"
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

    settings = EvaluationProtocol(
        object_size=with_size,
        fuse_top=fuse_top,
        losses=tuple(dict.fromkeys(loss)),
        epochs=epochs,
        min_steps=min_steps,
        bootstrap=bootstrap,
    )
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
            shifted=shifts,
            seed=seed,
            out=out,
            **settings.probe_arguments(),
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
