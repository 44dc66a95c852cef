"""`plankdiff export` and `plankdiff predict`: a deployable classifier folder, and predictions with it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console

from plankdiff.choices import Counting, Loss, OODOption, OutputFormat, SampleBy
from plankdiff.cli_support import (
    check_split,
    device_option,
    fail,
    open_dataset,
    resolve_device,
    say_device,
    switch,
)
from plankdiff.probe.protocol import DEFAULT_KEEP as DEFAULT_OOD_KEEP
from plankdiff.probe.protocol import DEFAULT_OOD_SCORE

# kept here, not imported from deploy.calibrate (torch): `--help` must not load the library.
# tests/test_cli.py checks that the two agree.
DEFAULT_TARGET_PRECISION = 0.9
console = Console()


def export_command(
    from_result: Path = typer.Option(
        None,
        "--from",
        help="probe result folder (results/<study>/metrics/<experiment>/<method>/seedN, with selected.json): "
        "its store, split, selected or fused pairs, object size and loss, instead of the four options below "
        "(default: none)",
    ),
    backbone: Path = typer.Option(
        None,
        "--backbone",
        help="run folder the features came from, DDPM or baseline (with --from: default the store's)",
    ),
    features: Path = typer.Option(
        None, "--features", help="feature store folder (plankdiff features extract; default: none)"
    ),
    split: str = typer.Option(
        None,
        "--split",
        help="split name, e.g. long-tailed-s0: the probe fits on train, selects and calibrates on val "
        "(default: none)",
    ),
    pair: list[str] = typer.Option(
        None, "--pair", help="feature pair, e.g. 'dec2@16/t=5'; repeat to concatenate (default: none)"
    ),
    object_size: bool = switch(
        False, "--object-size", help="append the log object size to every pair (the protocol's object_size)"
    ),
    transductive: bool = switch(
        False,
        "--transductive",
        help="allow calibration and test rows the backbone saw (unlabelled) in pre-training; refused otherwise",
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
    ood: OODOption = typer.Option(
        DEFAULT_OOD_SCORE,
        "--ood",
        help="open-set score deciding `unknown` (images unlike every training image): "
        "relative-mahalanobis (distance to the nearest class mean of the training features minus "
        "the distance under one Gaussian of them all), mahalanobis (without the subtraction), knn "
        "(distance to the k-th nearest training image), energy (of the probe's logits), or off",
    ),
    ood_keep: float = typer.Option(
        DEFAULT_OOD_KEEP,
        "--ood-keep",
        min=0.0,
        max=1.0,
        help="share of in-distribution validation images the open-set cut keeps, a fraction",
    ),
) -> None:
    """Refit the probe on the pairs, calibrate abstention and the open-set cut on val, test once, and
    write the classifier folder.

    Example: plankdiff export --from results/cpu/metrics/ndsb_long-tailed/diffusion/seed0 --out models/ndsb
    """
    from plankdiff.deploy.export import export_from_result, export_from_store, load_classifier
    from plankdiff.features.store import FeatureStore

    try:
        if from_result is not None:
            given = [f"--{n}" for n, v in (("features", features), ("split", split), ("pair", pair)) if v]
            if given:
                raise ValueError(
                    f"--from {from_result} gives the store, split and pairs; drop {', '.join(given)}"
                )
            path = export_from_result(
                from_result,
                out=out,
                backbone_run=backbone,
                target_precision=target_precision,
                transductive=transductive,
                ood=ood,
                ood_keep=ood_keep,
            )
        else:
            missing = [
                f"--{n}"
                for n, v in (("backbone", backbone), ("features", features), ("split", split), ("pair", pair))
                if not v
            ]
            if missing:
                raise ValueError(f"give --from RESULT, or {', '.join(missing)}")
            if (features / "store.json").is_file():  # else export_from_store names the missing store
                check_split(
                    console, open_dataset(console, data or FeatureStore(features).info["dataset"]), split
                )
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
                object_size=object_size,
                transductive=transductive,
                ood=ood,
                ood_keep=ood_keep,
            )
    except (FileNotFoundError, KeyError, ValueError) as error:
        fail(console, error)
    card = load_classifier(path).card
    test, abstention = card["metrics"]["test"], card["abstention"]
    decided = test["abstention"]["accuracy_when_decided"]
    console.print(
        f"[green]exported[/green] {len(card['classes'])} classes from "
        f"{' + '.join(p['name'] for p in card['pairs'])}"
        f"{' with object size' if card['recipe']['object_size'] else ''} → {path}\n"
        f"test: accuracy {test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f}; abstaining below the "
        f"val-calibrated thresholds: coverage {test['abstention']['coverage']:.3f}, accuracy "
        + (f"{decided:.3f}" if decided is not None else "n/a (nothing decided)")
    )
    if card.get("ood"):
        ood_card = card["ood"]
        console.print(
            f"open-set cut ({ood_card['method']}): keeps {ood_card['val_kept']:.3f} of val "
            f"(asked {ood_card['keep']:.3f}), {ood_card['test_kept']:.3f} of test; beyond it an image is unknown"
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
    device: str = device_option(help="auto: accelerate's choice (CUDA when there is one); cuda:N: GPU N"),
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
        False,
        "--score",
        help="compare with the true labels of the inputs: score.json, count_comparison.csv, and every counting method in quantification.csv",
    ),
    output_format: OutputFormat = typer.Option(
        "csv",
        "--format",
        help="csv: the CSV tables only; ecotaxa: also OUT/ecotaxa/ (ecotaxa_*.tsv and every image as PNG) "
        "for EcoTaxa's import",
    ),
    counts: Counting = typer.Option(
        None,
        "--counts",
        help="how counts.csv counts (default: the decisions, unclassified and unknown kept apart: "
        "what you will validate, but thresholds set in one period abstain on most of a shifted one); "
        "cc, pcc, pacc or emq estimate each sample's class counts from every image's posteriors (QuaPy), "
        "with 95%% bootstrap intervals: pacc corrects the classifier's confusions measured on validation "
        "(assumes the look of each class unchanged), emq re-weights the class priors (assumes only the "
        "priors change, needs calibrated posteriors), cc and pcc correct nothing; images beyond the open-set "
        "cut are counted as unknown, never quantified",
    ),
) -> None:
    """Classify images (a class, `unclassified` below its abstention threshold, or `unknown` beyond the
    open-set cut); run under `accelerate launch` to spread them over processes.

    Example: plankdiff predict models/ndsb samples/2024-06.zip --out predictions/2024-06 --sample-by day
    """
    from accelerate import PartialState

    from plankdiff.data.sources import SourceError
    from plankdiff.deploy.calibrate import SHIFT_ALARM_P
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
            output_format=output_format,
            counts=counts,
            score_counting=score,
        )
    except (ModelCardError, SourceError) as error:
        fail(console, error)
    if not state.is_main_process:
        return  # one summary per run, not one per process
    if run.open_set_note:
        console.print(f"[yellow]no open-set rejection:[/yellow] {run.open_set_note}")
    if run.shift_alarms:
        flagged = run.shift_alarms
        named = ", ".join(flagged[:5]) + (f" and {len(flagged) - 5} more" if len(flagged) > 5 else "")
        console.print(
            f"[yellow]shift alarm:[/yellow] {len(flagged)} of {len(run.table)} samples have more unknown "
            f"images than the classifier's validation (p < {SHIFT_ALARM_P}): {named}; their counts may "
            f"be of organisms or processing it never saw (see {run.counts_wide}: unknown_share, shift_p)",
            highlight=False,
        )
    for note in run.notes or []:
        console.print(f"[yellow]ambiguous grouping:[/yellow] {note}")
    skipped = f", [yellow]{run.n_skipped} skipped[/yellow] (see {run.skipped})" if run.n_skipped else ""
    if counts is not None:
        console.print(f"counts by {counts} with 95% bootstrap intervals (count, low, high) in {run.counts}")
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
            f"unknown {percent(known['unknown_rate'])}, accuracy when decided "
            f"{percent(known['accuracy_when_decided'])}; unseen classes ({summary['novel_class_images']} images): "
            f"abstained {percent(novel['abstention_rate'])}, unknown {percent(novel['unknown_rate'])}; "
            f"Bray–Curtis per sample: median {summary['bray_curtis']['median']:.3f} over {summary['samples']} "
            f"samples → {run.predictions.with_name('score.json')}"
        )
        quantification = run.predictions.with_name("quantification.csv")
        if quantification.exists():
            import pandas as pd

            table = pd.read_csv(quantification, keep_default_na=False)
            summary_rows = table[table["sample"].isin(["(pooled)", "(median over samples)"])]
            wide = summary_rows.pivot(index="method", columns="sample", values="bray_curtis")
            console.print(
                "counting methods, Bray–Curtis pooled / median over samples: "
                + "; ".join(
                    f"{m} {wide.loc[m, '(pooled)']:.3f} / {wide.loc[m, '(median over samples)']:.3f}"
                    for m in wide.index
                )
                + f" → {quantification}"
            )
