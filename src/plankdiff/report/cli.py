"""`plankdiff report render RESULTS_DIR`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.callback()
def _report() -> None:
    """Turn a results folder into a single self-contained HTML report."""


@app.command("render")
def render_command(
    results_dir: Path = typer.Argument(..., help="results/<NAME> folder with study.json and headline.csv"),
) -> None:
    """Write RESULTS_DIR/report.html and print its path.

    Example: plankdiff report render results/quick
    """
    from plankdiff.report.render import render_report

    try:
        report = render_report(results_dir)
    except (
        FileNotFoundError,
        ValueError,
        json.JSONDecodeError,
    ) as error:  # not a results folder, or bad data
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(report)


@app.command("scaling")
def scaling_command(
    results: list[Path] = typer.Argument(
        ..., help="results folders of the same study at different FLOP budgets"
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="folder for scaling.csv, scaling.md (the table) and one scaling_<experiment>.png per experiment",
    ),
) -> None:
    """Compute-scaling curves: test accuracy and macro-F1 against training TFLOPs, one line per method.

    Example: plankdiff report scaling results/scaling-low results/cpu results/scaling-high --out results/scaling
    """
    from plankdiff.report.scaling import scaling_figure, scaling_markdown, scaling_table

    try:
        table = scaling_table(results)
    except (FileNotFoundError, ValueError, json.JSONDecodeError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "scaling.csv", index=False)
    (out / "scaling.md").write_text(scaling_markdown(table))
    for experiment in sorted(set(table["experiment"])):
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in experiment)
        (out / f"scaling_{name}.png").write_bytes(scaling_figure(table, experiment))
    typer.echo(out / "scaling.csv")
