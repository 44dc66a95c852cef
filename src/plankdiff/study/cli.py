"""`plankdiff run EXPERIMENT.yaml [--dry-run]`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from plankdiff.cli_support import fail, switch

console = Console()


def run_command(
    experiment: str = typer.Argument(
        ...,
        help="a shipped experiment (quick, cpu, gpu, compare, compare-64px, best, scaling-low, scaling-high, "
        "normalisation, markers, ddpm-*: README, Shipped studies) or an experiment YAML file",
    ),
    dry_run: bool = switch(False, "--dry-run", help="list the stages that would run, run nothing"),
    results: Path = typer.Option(Path("results"), "--results", help="where results/<name>/ is written"),
    overrides: list[str] = typer.Option(
        None,
        "--set",
        help="KEY=VALUE on top of the experiment file, KEY dotted, VALUE YAML; repeatable "
        "(e.g. --set diffusion.max_minutes=5 --set 'seeds=[0]'; default: none)",
    ),
) -> None:
    """Run the whole study: prepare, pretrain, extract, probe, evaluate under shift, report.

    Example: plankdiff run quick --dry-run
    """
    from plankdiff.study.config import load_experiment
    from plankdiff.study.runner import Study, StudyInterrupted

    try:
        config = load_experiment(experiment, overrides=overrides or ())
    except ValueError as error:
        fail(console, error)
    study = Study(config, results_root=results, dry_run=dry_run, console=console)
    try:
        report = study.run()
    except StudyInterrupted as error:
        console.print(f"[yellow]interrupted:[/yellow] {error}")
        raise typer.Exit(130) from None
    if dry_run:
        print_plan(console, study.plan())
        return
    console.print(f"[green]report[/green] → {report}")


def print_plan(console: Console, plan: list[tuple[str, str]]) -> None:
    """One line per stage, its status first; a split's summary on the line below its name, so a
    long summary wraps under the stage it belongs to instead of running into the next one."""
    for name, status in plan:
        if name.startswith("split/"):
            console.print(f"  {'split':>10}  {name}", soft_wrap=True)
            console.print(f"  {'':>10}    {status}", soft_wrap=True)
        else:
            console.print(f"  {status:>10}  {name}", soft_wrap=True)


def init_command(
    path: Path = typer.Argument(
        Path("mine.yaml"), help="experiment file to write (its stem names the study)"
    ),
    source: Path = typer.Option(
        None,
        "--source",
        help="folder or .zip of your images in <class>/<image> layout (default: a placeholder to edit)",
    ),
    force: bool = switch(False, "--force", help="overwrite PATH if it exists"),
) -> None:
    """Write a commented experiment file for your own images, sized for 2 CPU cores.

    Example: plankdiff init mine.yaml --source ~/plankton/ && plankdiff run mine.yaml
    """
    from plankdiff.study.template import write_experiment

    written, summary = write_experiment(path, source=source, force=force)
    console.print(f"[green]wrote[/green] {written}: {summary}")
    console.print(f"next: plankdiff run {written} --dry-run, then plankdiff run {written}")
