"""`plankdiff run EXPERIMENT.yaml [--dry-run]`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from plankdiff.study.config import load_experiment
from plankdiff.study.runner import Study, StudyInterrupted

console = Console()


def run_command(
    experiment: str = typer.Argument(..., help="quick | cpu | gpu, or an experiment YAML file"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the stages that would run, run nothing"),
    results: Path = typer.Option(Path("results"), "--results", help="where results/<name>/ is written"),
) -> None:
    """Run the whole study: prepare, pretrain, extract, probe, evaluate under shift, report."""
    config = load_experiment(experiment)
    study = Study(config, results_root=results, dry_run=dry_run, console=console)
    try:
        report = study.run()
    except StudyInterrupted as error:
        console.print(f"[yellow]interrupted:[/yellow] {error}")
        raise typer.Exit(130) from None
    if dry_run:
        for name, status in study.plan():
            console.print(f"  {status:>10}  {name}")
        return
    console.print(f"[green]report[/green] → {report}")
