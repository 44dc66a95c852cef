"""`plankdiff export` and `plankdiff predict`: a deployable classifier folder, and predictions with it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console

from plankdiff.choices import Device, Loss, SampleBy
from plankdiff.cli_support import check_split, fail, open_dataset, resolve_device, say_device, switch

# kept here, not imported from deploy.calibrate (torch): `--help` must not load the library.
# tests/test_cli.py checks that the two agree.
DEFAULT_TARGET_PRECISION = 0.9
console = Console()


def export_command(
    backbone: Path = typer.Option(..., "--backbone", help="diffusion run folder the features came from"),
    features: Path = typer.Option(
        ..., "--features", help="feature store folder (plankdiff features extract)"
    ),
    split: str = typer.Option(
        ...,
        "--split",
        help="split name, e.g. long-tailed-s0: the probe fits on train, selects and calibrates on val",
    ),
    pair: list[str] = typer.Option(
        ..., "--pair", help="feature pair, e.g. 'dec2@16/t=5'; repeat to concatenate"
    ),
    out: Path = typer.Option(..., "--out", help="classifier folder to write"),
    data: str = typer.Option("", "--data", help="prepared dataset name or folder (default: the store's)"),
    target_precision: float = typer.Option(
        DEFAULT_TARGET_PRECISION,
        "--target-precision",
        min=0.0,
        max=1.0,
        help="per-class precision the abstention aims for, a fraction",
    ),
    loss: Loss = typer.Option("ce", "--loss", help="linear probe loss (as `plankdiff probe --loss`)"),
    seed: int = typer.Option(0, "--seed", help="random seed of the probe fit"),
) -> None:
    """Refit the probe on the pairs, calibrate abstention, test once, and write the classifier folder.

    Example: plankdiff export --backbone runs/ddpm --features cache/features/ddpm --split long-tailed-s0 --pair dec2@16/t=5 --out models/ndsb
    """
    from plankdiff.deploy.export import export_from_store, load_classifier
    from plankdiff.features.store import FeatureStore

    if (features / "store.json").is_file():  # else export_from_store names the missing store
        check_split(console, open_dataset(console, data or FeatureStore(features).info["dataset"]), split)
    try:
        path = export_from_store(
            backbone_run=backbone,
            features=features,
            split=split,
            pairs=pair,
            out=out,
            data=data or None,
            target_precision=target_precision,
            loss=loss,
            seed=seed,
        )
    except (FileNotFoundError, KeyError, ValueError) as error:
        fail(console, error)
    card = load_classifier(path).card
    test, abstention = card["metrics"]["test"], card["abstention"]
    decided = test["abstention"]["accuracy_when_decided"]
    console.print(
        f"[green]exported[/green] {len(card['classes'])} classes from {', '.join(pair)} → {path}\n"
        f"test: accuracy {test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f}; abstaining below the "
        f"val-calibrated thresholds: coverage {test['abstention']['coverage']:.3f}, accuracy "
        + (f"{decided:.3f}" if decided is not None else "n/a (nothing decided)")
    )
    if abstention["always_abstain"]:
        console.print(
            f"[yellow]always abstains[/yellow] (target precision unreachable on val): "
            f"{', '.join(abstention['always_abstain'])}"
        )


def predict_command(
    model: Path = typer.Argument(..., help="classifier folder written by `plankdiff export`"),
    inputs: list[Path] = typer.Argument(
        ..., help="image folders, zip archives, IFCB bins or folders of bins"
    ),
    out: Path = typer.Option(..., "--out", help="folder for predictions.csv, counts.csv and skipped.csv"),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="images per forward pass"),
    device: Device = typer.Option(
        "auto", "--device", help="auto: accelerate's choice (CUDA when there is one)"
    ),
    sample_by: SampleBy = typer.Option(
        "input",
        "--sample-by",
        help="what counts.csv counts per: input (folder, zip, IFCB bin), folder (each image's folder) or day (UTC capture day in file names)",
    ),
    captured_from: datetime = typer.Option(
        None,
        "--captured-from",
        formats=["%Y-%m-%d"],
        help="keep images captured on or after this day (UTC, from file names; default: no limit)",
    ),
    captured_to: datetime = typer.Option(
        None,
        "--captured-to",
        formats=["%Y-%m-%d"],
        help="keep images captured on or before this day (UTC, from file names; default: no limit)",
    ),
    score: bool = switch(
        False, "--score", help="compare with the true labels of the inputs: score.json, count_comparison.csv"
    ),
) -> None:
    """Classify images; run under `accelerate launch` to spread them over processes.

    Example: plankdiff predict models/ndsb samples/2024-06.zip --out predictions/2024-06 --sample-by day
    """
    from accelerate import PartialState

    from plankdiff.data.sources import SourceError
    from plankdiff.deploy.export import ModelCardError, load_classifier
    from plankdiff.deploy.predict import predict
    from plankdiff.deploy.score import score_predictions

    if device != "auto":
        resolve_device(console, device)  # refuses cuda where there is none
    import torch

    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())  # as predict() makes it
    if state.is_main_process:
        say_device(console, device if device != "auto" else state.device)
    try:
        classifier = load_classifier(model)
        run = predict(
            classifier,
            inputs,
            out / "predictions.csv",
            batch_size=batch_size,
            device=None if device == "auto" else device,
            sample_by=sample_by,
            captured_from=captured_from.date() if captured_from else None,
            captured_to=captured_to.date() if captured_to else None,
        )
    except (ModelCardError, SourceError) as error:
        fail(console, error)
    if not state.is_main_process:
        return  # one summary per run, not one per process
    for note in run.notes or []:
        console.print(f"[yellow]ambiguous grouping:[/yellow] {note}")
    skipped = f", [yellow]{run.n_skipped} skipped[/yellow] (see {run.skipped})" if run.n_skipped else ""
    console.print(
        f"[green]{run.n_predicted} images[/green] in {run.seconds:.1f} s → {run.predictions}, {run.counts}{skipped}"
    )
    if score:
        try:
            summary = score_predictions(run.predictions, classifier.card["classes"])
        except ValueError as error:
            fail(console, error)
        known, novel = summary["known"], summary["novel"]

        def percent(value):
            return "n/a" if value is None else f"{value:.1%}"

        console.print(
            f"known classes ({summary['known_class_images']} images): abstained {percent(known['abstention_rate'])}, "
            f"accuracy when decided {percent(known['accuracy_when_decided'])}; unknown classes "
            f"({summary['novel_class_images']} images): abstained {percent(novel['abstention_rate'])}; "
            f"Bray–Curtis per sample: median {summary['bray_curtis']['median']:.3f} over {summary['samples']} "
            f"samples → {run.predictions.with_name('score.json')}"
        )
