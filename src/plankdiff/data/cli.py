"""`plankdiff data …`: prepare, info, split."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from plankdiff.data.info import contact_sheet, summarise
from plankdiff.data.mapping import cross_domain_splits, load_mapping, unmapped_labels
from plankdiff.data.prepare import PreparedDataset, prepare
from plankdiff.data.splits import balanced_split, in_and_out_of_period, long_tailed_split, temporal_split

app = typer.Typer(no_args_is_help=True, add_completion=False)
console = Console()


@app.command("prepare")
def prepare_command(
    source: Path = typer.Argument(..., help="ImageFolder tree or .zip of one"),
    name: str = typer.Option(
        ..., "--name", help="name of the prepared dataset (folder under cache/prepared)"
    ),
    size: int = typer.Option(32, "--size", help="side S of the S×S output"),
    mode: str = typer.Option("fit", "--mode", help="fit | keep-scale"),
    channels: int = typer.Option(1, "--channels", help="1 (default) or 3"),
    polarity: bool = typer.Option(True, "--polarity/--no-polarity", help="make every background dark"),
    workers: int = typer.Option(0, "--workers", help="decoding processes (0: one per core)"),
    labels: Path = typer.Option(
        None, "--labels", help="IFCB bins: CSV of manual classes (file_name, class_name)"
    ),
) -> None:
    """Decode every image once into a memory-mappable array, with metadata and a skip report."""
    dataset = prepare(
        source,
        name=name,
        size=size,
        mode=mode,
        channels=channels,
        normalise_polarity=polarity,
        workers=workers or None,
        labels_csv=labels,
    )
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
    per_class: int = typer.Option(8, "--per-class"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Classes, counts, sizes, capture-time range, and a PNG contact sheet."""
    dataset = _open(name)
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
    kind: str = typer.Option(
        "long-tailed", "--kind", help="long-tailed | balanced | temporal | cross-domain"
    ),
    seed: int = typer.Option(0, "--seed"),
    train_years: str = typer.Option("2018,2019", "--train-years", help="temporal: comma-separated years"),
    test_years: str = typer.Option("2020", "--test-years", help="temporal: comma-separated years"),
    target: str = typer.Option("", "--target", help="cross-domain: the shifted dataset"),
    hold_out: float = typer.Option(
        0.0,
        "--hold-out",
        help="temporal: also write -within/-across splits testing this share of the train period",
    ),
    mapping: str = typer.Option("ndsb_pwssc", "--mapping", help="cross-domain: shipped name or CSV path"),
    source_key: str = typer.Option("ndsb", "--source-key"),
    target_key: str = typer.Option("pwssc", "--target-key"),
) -> None:
    """Write a train/val/test assignment under <dataset>/splits/."""
    dataset = _open(name)
    if kind == "long-tailed":
        splits = [(dataset, long_tailed_split(dataset, seed=seed))]
    elif kind == "balanced":
        splits = [(dataset, balanced_split(dataset, seed=seed))]
    elif kind == "temporal":
        years = tuple(int(y) for y in train_years.split(",")), tuple(int(y) for y in test_years.split(","))
        temporal = temporal_split(dataset, train_years=years[0], test_years=years[1], seed=seed)
        splits = [(dataset, temporal)]
        if hold_out:
            splits += [(dataset, s) for s in in_and_out_of_period(temporal, fraction=hold_out, seed=seed)]
    elif kind == "cross-domain":
        if not target:
            raise typer.BadParameter("cross-domain needs --target, the prepared shifted dataset")
        shifted = _open(target)
        table = load_mapping(mapping)
        pair = cross_domain_splits(
            dataset, shifted, table, source_key=source_key, target_key=target_key, seed=seed
        )
        splits = [(dataset, pair[0]), (shifted, pair[1])]
        for ds, key in ((dataset, source_key), (shifted, target_key)):
            console.print(
                f"{ds.name}: unmapped classes left out: {', '.join(unmapped_labels(ds, table, key))}"
            )
    else:
        raise typer.BadParameter(f"unknown split kind {kind!r}")
    for _, split in splits:
        split.check_usable()
    for ds, split in splits:
        warning = split.selection_warning()
        if warning:
            console.print(f"[yellow]warning:[/yellow] {warning}")
        path = split.save(ds)
        console.print(f"[green]{split.name}[/green] on {ds.name}: {split.summary()} → {path}")


def _open(name: str) -> PreparedDataset:
    return PreparedDataset.open(name)
