"""`plankdiff evaluate shift|open-set FEATURES --split …`: the study's evaluations for one feature
store (one backbone run) and one split, outside a study. Each writes a results folder: the probe's
files (as `plankdiff probe` writes them, with the git SHA and the settings), the table as CSV and
`evaluation.json`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args

import typer
from rich.console import Console

from plankdiff.choices import ShiftName
from plankdiff.cli_support import fail, load_split
from plankdiff.probe.cli import DEFAULTS, _known_losses, _open_store
from plankdiff.probe.protocol import DEFAULT_KEEP, HOLD_OUT_EVERY, EvaluationProtocol

console = Console()
app = typer.Typer(no_args_is_help=True)
SHIFTS: tuple[str, ...] = get_args(ShiftName)


def _protocol(
    loss: list[str], with_size: bool, fuse_top: int, epochs: int, min_steps: int
) -> EvaluationProtocol:
    return EvaluationProtocol(
        object_size=with_size,
        fuse_top=fuse_top,
        losses=tuple(dict.fromkeys(loss)),
        epochs=epochs,
        min_steps=min_steps,
        bootstrap=DEFAULTS.bootstrap,
    )


# The arguments and probe options both subcommands take, declared once (with `plankdiff probe`'s
# names and defaults; each default is given in the signature, as typer's `Annotated` form requires).
Features = Annotated[Path, typer.Argument(help="feature store folder (DDPM, baseline or raw pixels)")]
SplitName = Annotated[
    str, typer.Option("--split", help="split name on the store's dataset, e.g. long-tailed-s0")
]
Loss = Annotated[
    list[str], typer.Option("--loss", callback=_known_losses, help="probe loss, repeatable (as for probe)")
]
# metavar "": a bare switch, as `cli_support.switch` declares it.
WithSize = Annotated[
    bool, typer.Option("--with-size", metavar="", help="append log original width, height, area")
]
FuseTop = Annotated[int, typer.Option("--fuse-top", min=1, help="also try the top-k pairs fused")]
Epochs = Annotated[int, typer.Option("--epochs", min=1, help="passes over the training rows")]
MinSteps = Annotated[int, typer.Option("--min-steps", min=1, help="optimiser steps at least")]
Seed = Annotated[int, typer.Option("--seed", help="random seed of the probe fits")]


def _known_shifts(values: list[str]) -> list[str]:
    """typer takes no list of choices: the repeatable --shift is checked here, at parse time."""
    unknown = [value for value in values if value not in SHIFTS]
    if unknown:
        raise typer.BadParameter(f"{unknown[0]!r} is not one of {', '.join(map(repr, SHIFTS))}")
    return values


def _inputs(features: Path, split: str):
    store = _open_store(features)
    try:
        dataset = store.dataset()
    except (ValueError, FileNotFoundError) as error:
        fail(console, error)
    return store, dataset, load_split(console, dataset, split)


def _record(out: Path, what: str, settings: dict, table) -> None:
    from plankdiff.provenance import git_sha, write_json

    table.to_csv(out / f"{what}.csv", index=False)
    write_json(
        out / "evaluation.json",
        {"evaluation": what, "git_sha": git_sha(), "config": settings, "table": table.to_dict("records")},
    )


@app.command("shift")
def shift_command(
    features: Features,
    split: SplitName,
    shift: list[str] = typer.Option(
        list(SHIFTS),
        "--shift",
        callback=_known_shifts,
        help=f"a processing shift, repeatable: {', '.join(SHIFTS)} (default: all)",
    ),
    shift_seed: int = typer.Option(0, "--shift-seed", help="seed of the shifts' draws (noise, JPEG quality)"),
    source: Path = typer.Option(
        None, "--source", help="the raw zip or folder the dataset was prepared from (default: as recorded)"
    ),
    out: Path = typer.Option(None, "--out", help="result folder (default: FEATURES/shift-<split>)"),
    loss: Loss = DEFAULTS.losses,
    with_size: WithSize = False,
    fuse_top: FuseTop = DEFAULTS.fuse_top,
    epochs: Epochs = DEFAULTS.epochs,
    min_steps: MinSteps = DEFAULTS.min_steps,
    seed: Seed = 0,
) -> None:
    """Shift the split's test images (from the raw files), prepare them like the dataset, extract the
    store's features from them with the same backbone, and score the probe selected on clean validation.

    Example: plankdiff evaluate shift cache/features/ddpm --split long-tailed-s0 --shift jpeg --shift inverted
    """
    from plankdiff.evaluation.processing_shift import prepare_shifts, shifted_dataset_scores

    store, dataset, chosen = _inputs(features, split)
    source = source or Path(dataset.info["source"])
    if not source.exists():
        fail(
            console,
            f"--source {source}: does not exist (give the zip or folder {dataset.name} was prepared from)",
        )
    out = out or features / f"shift-{split}"
    settings = _protocol(loss, with_size, fuse_top, epochs, min_steps)
    config = {
        "features": str(features),
        "split": split,
        "source": str(source),
        "shifts": list(shift),
        "shift_seed": shift_seed,
        "seed": seed,
        "protocol": settings.model_dump(mode="json"),
    }
    try:
        shifted = prepare_shifts(
            source,
            dataset,
            chosen,
            out_dir=out / "shift-zips",
            name=f"{dataset.name}-{split}",
            shifts=list(dict.fromkeys(shift)),
            seed=shift_seed,
        )
        # The probe's selection is made on clean validation before any shifted image is read; the
        # pairs to extract are every pair it may select (the grid runs over all of them).
        result, table = shifted_dataset_scores(
            store,
            chosen,
            shifted,
            features_dir=out / "features",
            seed=seed,
            out=out,
            config=config,
            **settings.probe_arguments(),
        )
    except ValueError as error:
        fail(console, error)
    _record(out, "processing_shift", config, table)
    console.print(f"selected [bold]{result.selected_pair}[/bold] on clean validation → {out}")
    for row in table.itertuples(index=False):
        console.print(
            f"  {row.set}: accuracy {row.accuracy:.3f} (drop {row.accuracy_drop:+.3f}), "
            f"macro-F1 {row.macro_f1:.3f} (drop {row.macro_f1_drop:+.3f})",
            highlight=False,
        )


@app.command("open-set")
def open_set_command(
    features: Features,
    split: SplitName,
    hold_out_every: int = typer.Option(
        HOLD_OUT_EVERY,
        "--hold-out-every",
        min=2,
        help="hold out every n-th class name, sorted (a fixed share)",
    ),
    keep: float = typer.Option(
        DEFAULT_KEEP, "--keep", min=0.0, max=1.0, help="share of known-class validation images the cut keeps"
    ),
    out: Path = typer.Option(None, "--out", help="result folder (default: FEATURES/open-set-<split>)"),
    loss: Loss = DEFAULTS.losses,
    with_size: WithSize = False,
    fuse_top: FuseTop = DEFAULTS.fuse_top,
    epochs: Epochs = DEFAULTS.epochs,
    min_steps: MinSteps = DEFAULTS.min_steps,
    seed: Seed = 0,
) -> None:
    """Hold classes out of the probe, calibrate the unknown cut on the known classes' validation rows,
    and report on test the share of held-out-class images rejected, of known images kept, and AUROC.

    Example: plankdiff evaluate open-set cache/features/ddpm --split long-tailed-s0
    """
    from plankdiff.evaluation.open_set import open_set_scores

    if keep <= 0:
        fail(console, f"--keep {keep}: the share of known images to keep must be above 0")
    store, dataset, chosen = _inputs(features, split)
    out = out or features / f"open-set-{split}"
    settings = _protocol(loss, with_size, fuse_top, epochs, min_steps)
    config = {
        "features": str(features),
        "split": split,
        "hold_out_every": hold_out_every,
        "keep": keep,
        "seed": seed,
        "protocol": settings.model_dump(mode="json"),
    }
    try:
        result = open_set_scores(
            store,
            chosen,
            every=hold_out_every,
            keep=keep,
            seed=seed,
            out=out,
            config=config,
            **settings.probe_arguments(),
        )
    except ValueError as error:
        fail(console, error)
    _record(out, "open_set", config | {"held_out": result.held_out}, result.table)
    console.print(
        f"held out {len(result.held_out)} of {len(chosen.classes)} classes; selected "
        f"[bold]{result.probe.selected_pair}[/bold] on known-class validation → {out}"
    )
    for row in result.table.itertuples(index=False):
        # val rows are the ones to choose a score on; test rows are the measurement
        console.print(
            f"  {row.score} ({row.part}): held-out rejected {row.unknown_rejected:.3f}, "
            f"known kept {row.known_kept:.3f}, AUROC {row.auroc:.3f}",
            highlight=False,
        )
