"""The `plankdiff` command: one verb per pipeline stage, each a thin layer over the Python API.

The verb modules import the library (torch, diffusers, lightly, scikit-learn, matplotlib) inside
the commands, so `plankdiff --help` and every verb's `--help` answer at once.
"""

from __future__ import annotations

import os
import sys

import click
import typer
from typer.core import TyperGroup

from plankdiff import __version__
from plankdiff.baselines.cli import app as baseline_app
from plankdiff.data.cli import app as data_app
from plankdiff.deploy.cli import export_command, predict_command
from plankdiff.diffusion.cli import app as diffusion_app
from plankdiff.evaluation.cli import app as evaluate_app
from plankdiff.features.cli import app as features_app
from plankdiff.probe.cli import probe_command
from plankdiff.report.cli import app as report_app
from plankdiff.study.cli import init_command, run_command

# What the library raises for input a person can fix: every project error (SourceError,
# SplitMismatch, StoreMismatch, LeakError, ModelCardError, CheckpointError, pydantic's
# ValidationError) derives from ValueError; missing and already-present paths are OS errors.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)
# Set to see the traceback of a user error too (when the message is not enough to find the cause).
TRACEBACK_ENV = "PLANKDIFF_TRACEBACK"


def one_line(error: BaseException) -> str:
    """The error's message on one line (pydantic and a few libraries write several)."""
    return " ".join(str(error).split()) or type(error).__name__


# Usage errors raised while the command line is parsed: typer >= 0.29 carries its own copy of
# click, whose exceptions derive from `typer.TyperException`, not from click's.
PARSE_ERRORS = (click.UsageError, getattr(typer, "TyperException", click.UsageError))


class UserErrors(TyperGroup):
    """The root group: every verb (and sub-verb) runs inside its `invoke`, so this is the one place
    where a user error becomes `error: <message>` on stderr and exit code 1, without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PARSE_ERRORS as error:  # refused while parsing (a bad choice or range): exit 2, as click
            if os.environ.get(TRACEBACK_ENV) or getattr(error, "exit_code", None) != 2:
                raise
            click.echo(f"error: {one_line(error.format_message())}", err=True)
            sys.stderr.flush()
            raise typer.Exit(2) from None
        except USER_ERRORS as error:
            if os.environ.get(TRACEBACK_ENV):
                raise
            click.echo(f"error: {one_line(error)}", err=True)
            sys.stderr.flush()
            raise typer.Exit(1) from None


app = typer.Typer(cls=UserErrors, no_args_is_help=True, add_completion=False)


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
app.add_typer(
    evaluate_app, name="evaluate", help="Processing shift and open-set rejection of one store and split."
)
app.command("init")(init_command)
app.command("run")(run_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
