"""The `plankdiff` command: one verb per pipeline stage, each a thin layer over the Python API."""

from __future__ import annotations

import typer

from plankdiff.baselines.cli import app as baseline_app
from plankdiff.data.cli import app as data_app
from plankdiff.deploy.cli import export_command, predict_command
from plankdiff.diffusion.cli import app as diffusion_app
from plankdiff.features.cli import app as features_app
from plankdiff.probe.cli import probe_command
from plankdiff.report import app as report_app
from plankdiff.study.cli import run_command

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
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
