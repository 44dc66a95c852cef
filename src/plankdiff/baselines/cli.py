"""`plankdiff baseline …`: train, list."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from plankdiff.choices import Precision
from plankdiff.cli_support import (
    check_split,
    fail,
    max_tflops_option,
    open_dataset,
    say_device,
    switch,
    training_precision_option,
)
from plankdiff.diffusion.cli import train_and_report

app = typer.Typer(no_args_is_help=True, add_completion=False)
console = Console()

LIST_SIZE, LIST_CHANNELS, LIST_CLASSES = 32, 1, 121  # NDSB at 32 px, grayscale


@app.command("train")
def train_command(
    method: str = typer.Argument(..., help="baseline method (see `plankdiff baseline list`)"),
    data: str = typer.Argument(..., help="prepared dataset name or folder"),
    out: Path = typer.Option(..., "--out", help="run folder"),
    max_minutes: float = typer.Option(
        None,
        "--max-minutes",
        min=0.0,
        help="training-time budget in minutes, summed over resumes (default: none; give it, --max-steps or both)",
    ),
    max_tflops: float = max_tflops_option(),
    split: str = typer.Option(
        "", "--split", help="train on this split's train rows (required unless --all-rows; default: none)"
    ),
    all_rows: bool = switch(
        False, "--all-rows", help="self-supervised only: every image, test images included (transductive)"
    ),
    resume: bool = switch(False, "--resume", help="continue from the newest checkpoint in --out"),
    max_steps: int = typer.Option(None, "--max-steps", min=1, help="step cap (default: none)"),
    batch_size: int = typer.Option(
        None, "--batch-size", min=1, help="images per step (default: the method's)"
    ),
    width: int = typer.Option(
        None, "--width", min=1, help="ResNet base width or ViT width, channels (default: the method's)"
    ),
    lr: float = typer.Option(None, "--lr", min=0.0, help="peak learning rate (default: the method's)"),
    seed: int = typer.Option(None, "--seed", help="(default: the method's)"),
    precision: Precision = training_precision_option(),
) -> None:
    """Train a baseline on the same images as the DDPM, under a time budget.

    Example: plankdiff baseline train simclr ndsb --max-minutes 20 --split long-tailed-s0 --out runs/simclr
    """
    from plankdiff.baselines.registry import get_method
    from plankdiff.baselines.train import BaselineConfig, BaselineTrainer, training_rows

    dataset = open_dataset(console, data)
    if split:
        check_split(console, dataset, split)
    try:
        get_method(method)
        config = BaselineConfig.for_method(
            method,
            max_minutes=max_minutes,
            max_tflops=max_tflops,
            max_steps=max_steps,
            batch_size=batch_size,
            width=width,
            lr=lr,
            seed=seed,
            precision=precision,
        )
        trainer = BaselineTrainer(
            config=config,
            dataset=dataset,
            data=training_rows(dataset, method=method, split=split or None, all_rows=all_rows),
            out=out,
            resume=resume,
        )
    except (KeyError, ValueError, FileNotFoundError) as error:  # ValueError covers invalid configs
        fail(console, error.args[0] if isinstance(error, KeyError) else error)
    counts = trainer.method.parameter_counts()
    say_device(console, trainer.device, precision=trainer.precision)
    console.print(
        f"{method}: {counts['backbone'] / 1e6:.2f}M backbone parameters ({counts['trainable'] / 1e6:.2f}M trained), "
        f"{len(trainer.images)} images → {out}"
    )
    train_and_report(trainer, console)


@app.command("list")
def list_command() -> None:
    """The methods, with their backbones and parameter counts at 32 px, 1 channel.

    Example: plankdiff baseline list
    """
    from plankdiff.baselines.registry import load_methods

    table = Table(
        title=f"baselines at {LIST_SIZE} px, {LIST_CHANNELS} channel ({LIST_CLASSES} classes for a head)"
    )
    for column in (
        "method",
        "labels",
        "backbone",
        "backbone params",
        "trained params",
        "lr / wd",
        "views",
        "features",
    ):
        table.add_column(column)
    for name, recipe in sorted(load_methods().items()):
        method = recipe.build(
            channels=LIST_CHANNELS, size=LIST_SIZE, n_classes=LIST_CLASSES if recipe.uses_labels else None
        )
        counts = method.parameter_counts()
        table.add_row(
            name,
            "yes" if recipe.uses_labels else "no",
            recipe.backbone_name,
            f"{counts['backbone'] / 1e6:.2f}M",
            f"{counts['trainable'] / 1e6:.2f}M",
            f"{recipe.lr:g} / {recipe.weight_decay:g}",
            recipe.views.describe(),
            ", ".join(f"{b.name} ({b.dim})" for b in method.feature_blocks()),
        )
    console.print(table)
