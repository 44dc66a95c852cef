"""The `plankdiff` command: one verb per pipeline stage, each a thin layer over the Python API.

The verb modules import the library (torch, diffusers, lightly, scikit-learn, matplotlib) inside
the commands, so `plankdiff --help` and every verb's `--help` answer at once.
"""

from __future__ import annotations

import typer

from plankdiff import __version__
from plankdiff.baselines.cli import app as baseline_app
from plankdiff.data.cli import app as data_app
from plankdiff.deploy.cli import export_command, predict_command
from plankdiff.diffusion.cli import app as diffusion_app
from plankdiff.features.cli import app as features_app
from plankdiff.probe.cli import probe_command
from plankdiff.report.cli import app as report_app
from plankdiff.study.cli import run_command

app = typer.Typer(no_args_is_help=True, add_completion=False)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"plankdiff {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        metavar="",
        help="print the version and exit",
    ),
) -> None:
    """Frozen diffusion-model features as plankton classifiers: prepare data, train a DDPM without
    labels, probe its blocks, compare with baselines, deploy.

    Example: plankdiff run quick
    """


app.add_typer(data_app, name="data", help="Read, prepare, split and inspect plankton image collections.")
app.add_typer(diffusion_app, name="diffusion", help="Train the DDPM denoiser without labels; draw samples.")
app.add_typer(features_app, name="features", help="List blocks; extract frozen features per (block, t).")
app.add_typer(baseline_app, name="baseline", help="Supervised and self-supervised baselines, same budget.")
app.command("export")(export_command)
app.command("predict")(predict_command)
app.add_typer(report_app, name="report", help="Render a results folder into one self-contained report.html.")
app.command("probe")(probe_command)
app.command("run")(run_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
