"""`plankdiff data …`: prepare, info, split."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from plankdiff.choices import NOISE_CEILING, Background, Markers, SizeMode, SplitKind
from plankdiff.cli_support import fail, int_list, open_dataset, switch
from plankdiff.data.shares import SplitOptions

app = typer.Typer(no_args_is_help=True, add_completion=False)
console = Console()
# `data split`'s share options default to the experiment files' `splits:` defaults.
SHARES = {name: field.default for name, field in SplitOptions.model_fields.items()}


def parse_noise_ceiling(text: str | float) -> float | None:
    """`--noise-ceiling`: grey levels, or `none` for no ceiling; whether it is above 0 is checked
    where the preprocessing is built (`PreprocessParams`), in one line."""
    if isinstance(text, float):  # the default, passed through the parser by click
        return text
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither a number of grey levels nor 'none'") from None


@app.command("prepare")
def prepare_command(
    source: Path = typer.Argument(..., help="ImageFolder tree or .zip of one"),
    name: str = typer.Option(
        ..., "--name", help="name of the prepared dataset (folder under cache/prepared)"
    ),
    size: int = typer.Option(32, "--size", min=2, help="side S of the S×S output, pixels"),
    mode: SizeMode = typer.Option(
        "fit", "--mode", help="fit: resize to S×S; keep-scale: native size, one common factor per dataset"
    ),
    channels: int = typer.Option(1, "--channels", min=1, max=3, help="1 (grayscale) or 3 (RGB)"),
    polarity: bool = switch(True, "--polarity/--no-polarity", help="make every background dark"),
    background: Background | None = typer.Option(
        None,
        "--background",
        help="normalise (default with --polarity): subtract the border's background level, drop its "
        "noise, scale the object's contrast; none: as before",
    ),
    markers: Markers | None = typer.Option(
        None,
        "--markers",
        help="remove (default with background normalisation): small separate parts in a corner of "
        "the frame (scale markers, labels) become background; keep: as recorded, and preparations "
        "made before this default",
    ),
    noise_ceiling: float | None = typer.Option(
        NOISE_CEILING,
        "--noise-ceiling",
        parser=parse_noise_ceiling,
        metavar="<FLOAT|none>",
        help="background normalisation: the most noise (robust σ, grey levels) the image border may "
        "claim; a larger spread is an object touching the border, not noise. none: no ceiling, as "
        "preparations made before this option (they blank some frame-filling objects)",
    ),
    workers: int = typer.Option(0, "--workers", min=0, help="decoding processes (0: one per core)"),
    labels: Path = typer.Option(
        None, "--labels", help="IFCB bins: CSV of manual classes (file_name, class_name); default: none"
    ),
) -> None:
    """Decode every image once into a memory-mappable array, with metadata and a skip report.

    Example: plankdiff data prepare ../shared/datasets/ndsb.zip --name ndsb --size 32 --mode fit
    """
    from plankdiff.data.prepare import prepare
    from plankdiff.data.sources import SourceError

    try:
        dataset = prepare(
            source,
            name=name,
            size=size,
            mode=mode,
            channels=channels,
            normalise_polarity=polarity,
            background=background,
            markers=markers,
            noise_ceiling=noise_ceiling,
            workers=workers or None,
            labels_csv=labels,
        )
    except (SourceError, AssertionError, ValueError) as error:
        fail(console, error)
    info = dataset.info
    console.print(
        f"[green]prepared[/green] {dataset.name}: {info['n_images']} images, {len(info['classes'])} classes "
        f"→ {dataset.root}"
    )
    if info["n_skipped"]:
        console.print(
            f"[yellow]skipped {info['n_skipped']} file(s)[/yellow]; reasons in {dataset.root / 'skipped.csv'}"
        )
        for _, row in dataset.skipped.head(10).iterrows():
            console.print(f"  {row['file']}: {row['reason']}")
    if info["empty_class_folders"]:
        console.print(f"[yellow]empty class folders:[/yellow] {', '.join(info['empty_class_folders'])}")


@app.command("info")
def info_command(
    name: str = typer.Argument(..., help="prepared dataset name or folder"),
    sheet: Path = typer.Option(
        None, "--sheet", help="contact sheet PNG (default: <dataset>/contact_sheet.png)"
    ),
    per_class: int = typer.Option(8, "--per-class", min=1, help="images per class on the contact sheet"),
    as_json: bool = switch(False, "--json", help="print the summary as JSON"),
) -> None:
    """Classes, counts, sizes, capture-time range, and a PNG contact sheet.

    Example: plankdiff data info ndsb --per-class 8
    """
    from plankdiff.data.info import contact_sheet, summarise

    dataset = open_dataset(console, name)
    summary = summarise(dataset)
    path = contact_sheet(dataset, sheet or dataset.root / "contact_sheet.png", per_class=per_class)
    if as_json:
        print(json.dumps(summary | {"contact_sheet": str(path)}, indent=2))
        return
    table = Table(title=f"{summary['name']}: {summary['images']} images, {summary['classes']} classes")
    table.add_column("class")
    table.add_column("images", justify="right")
    for label, count in summary["per_class"].items():
        table.add_row(label, str(count))
    console.print(table)
    for key in (
        "array",
        "skipped",
        "class_size",
        "orig_longest_side_px",
        "inverted_fraction",
        "capture_time",
    ):
        console.print(f"[bold]{key}[/bold]: {summary[key]}")
    console.print(f"[bold]contact sheet[/bold]: {path}")


@app.command("split")
def split_command(
    name: str = typer.Argument(..., help="prepared dataset name or folder"),
    kind: SplitKind = typer.Option(
        "long-tailed",
        "--kind",
        help="long-tailed: stratified by class (train / --val-fraction / --test-fraction); balanced: the "
        "same, classes with --balanced-min-train train images, each capped at --balanced-cap; temporal: "
        "by capture year; cross-domain: two datasets through a class mapping",
    ),
    val_fraction: float = typer.Option(
        SHARES["val_fraction"],
        "--val-fraction",
        help="share of each class held out for validation (temporal: of the training period's images "
        "not in --test-fraction), as the experiment files' splits.val_fraction",
    ),
    test_fraction: float = typer.Option(
        SHARES["test_fraction"],
        "--test-fraction",
        help="share of each class held out for test (long-tailed, balanced)",
    ),
    balanced_min_train: int = typer.Option(
        SHARES["balanced_min_train"],
        "--balanced-min-train",
        help="balanced: classes with this many train images",
    ),
    balanced_cap: int = typer.Option(
        SHARES["balanced_cap"], "--balanced-cap", help="balanced: train images kept per class at most"
    ),
    seed: int = typer.Option(0, "--seed", help="the split is named <kind>-s<seed>"),
    train_years: str = typer.Option("2018,2019", "--train-years", help="temporal: comma-separated years"),
    test_years: str = typer.Option("2020", "--test-years", help="temporal: comma-separated years"),
    target: str = typer.Option(
        "", "--target", help="cross-domain: the shifted prepared dataset (required there; default: none)"
    ),
    hold_out: float = typer.Option(
        0.0,
        "--hold-out",
        min=0.0,
        help="temporal: also write -within/-across splits testing this fraction of the train period (0: no)",
    ),
    mapping: str = typer.Option("ndsb_pwssc", "--mapping", help="cross-domain: shipped name or CSV path"),
    source_key: str = typer.Option("ndsb", "--source-key", help="cross-domain: mapping column of NAME"),
    target_key: str = typer.Option("pwssc", "--target-key", help="cross-domain: mapping column of --target"),
) -> None:
    """Write a train/val/test assignment under <dataset>/splits/.

    Example: plankdiff data split ndsb --kind long-tailed --seed 0
    """
    from pydantic import ValidationError

    from plankdiff.data.mapping import cross_domain_splits, load_mapping, unmapped_labels
    from plankdiff.data.splits import balanced_split, in_and_out_of_period, long_tailed_split, temporal_split
    from plankdiff.validation import problems

    fields = {
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "balanced_min_train": balanced_min_train,
        "balanced_cap": balanced_cap,
    }
    try:  # the experiment files' `splits:`, checked by the same model
        shares = SplitOptions(**fields)
    except ValidationError as error:
        fail(console, problems(error, source="plankdiff data split", what="shares", flags=fields))
    dataset = open_dataset(console, name)
    if kind == "long-tailed":
        splits = [(dataset, long_tailed_split(dataset, seed=seed, fractions=shares.fractions))]
    elif kind == "balanced":
        balanced = balanced_split(
            dataset,
            seed=seed,
            min_train=shares.balanced_min_train,
            cap=shares.balanced_cap,
            fractions=shares.fractions,
        )
        splits = [(dataset, balanced)]
    elif kind == "temporal":
        years = int_list("--train-years", train_years), int_list("--test-years", test_years)
        temporal = temporal_split(
            dataset,
            train_years=years[0],
            test_years=years[1],
            val_fraction=shares.temporal_val_fraction,
            seed=seed,
        )
        splits = [(dataset, temporal)]
        if hold_out:
            splits += [(dataset, s) for s in in_and_out_of_period(temporal, fraction=hold_out, seed=seed)]
    else:  # cross-domain
        if not target:
            raise typer.BadParameter("cross-domain needs --target, the prepared shifted dataset")
        shifted = open_dataset(console, target)
        table = load_mapping(mapping)
        # The source rows keep the parts of NAME's long-tailed split with the same seed and shares
        # (the partition backbones pre-train on), as in a study.
        base = long_tailed_split(dataset, seed=seed, fractions=shares.fractions)
        pair = cross_domain_splits(
            dataset, shifted, table, source_key=source_key, target_key=target_key, base=base
        )
        splits = [(dataset, pair[0]), (shifted, pair[1])]
        for ds, key in ((dataset, source_key), (shifted, target_key)):
            console.print(
                f"{ds.name}: unmapped classes left out: {', '.join(unmapped_labels(ds, table, key))}"
            )
    for _, split in splits:
        split.check_usable()
        warning = split.selection_warning()
        if warning:
            console.print(f"[yellow]warning:[/yellow] {warning}")
    for ds, split in splits:
        path = split.save(ds)
        console.print(f"[green]{split.name}[/green] on {ds.name}: {split.summary()} → {path}")
