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
