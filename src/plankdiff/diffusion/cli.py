"""`plankdiff diffusion …`: train, sample."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import typer
from rich.console import Console

from plankdiff.choices import Precision, Preset
from plankdiff.cli_support import (
    fail,
    load_split,
    max_tflops_option,
    open_dataset,
    say_device,
    switch,
    training_precision_option,
)

INTERRUPTED = 143  # 128 + SIGTERM, what a shell reports for a job ended by `kill`

app = typer.Typer(no_args_is_help=True, add_completion=False)
console = Console()


def preset_or_file(value: str) -> str:
    """A shipped preset, or a YAML file that exists: a typo is refused before anything is loaded."""
    if value in get_args(Preset) or Path(value).is_file():
        return value
    raise typer.BadParameter(f"{value!r} is neither one of {', '.join(get_args(Preset))} nor a YAML file")


@app.command("train")
def train_command(
    data: str = typer.Argument(..., help="prepared dataset name or folder"),
    preset: str = typer.Option(
        "cpu",
        "--preset",
        callback=preset_or_file,
        help=f"network and recipe: {' | '.join(get_args(Preset))}, or a YAML file",
    ),
    out: Path = typer.Option(..., "--out", help="run folder"),
    split: str = typer.Option(
        "", "--split", help="train on this split's train rows (required unless --all-rows; default: none)"
    ),
    all_rows: bool = switch(
        False, "--all-rows", help="pre-train on every image, test images included (transductive)"
    ),
    max_minutes: float = typer.Option(
        None,
        "--max-minutes",
        min=0.0,
        help="training-time budget in minutes, summed over resumes (default: the preset's; none: steps only)",
    ),
    max_tflops: float = max_tflops_option(),
    max_steps: int = typer.Option(None, "--max-steps", min=1, help="step cap (default: the preset's)"),
    batch_size: int = typer.Option(
        None, "--batch-size", min=1, help="images per step (default: the preset's)"
    ),
    seed: int = typer.Option(None, "--seed", help="(default: the preset's)"),
    checkpoint_every: int = typer.Option(
        None, "--checkpoint-every", min=1, help="steps between checkpoints (default: the preset's)"
    ),
    sample_every: int = typer.Option(
        None, "--sample-every", min=0, help="steps between sample grids (0: none; default: the preset's)"
    ),
    precision: Precision = training_precision_option(),
    resume: bool = switch(False, "--resume", help="continue from the newest checkpoint in --out"),
) -> None:
    """Train a DDPM denoiser on unlabelled images (labels are never read).

    Example: plankdiff diffusion train ndsb --preset cpu --max-minutes 60 --split long-tailed-s0 --out runs/ddpm
    """
    from plankdiff.diffusion.config import load_config
    from plankdiff.diffusion.model import count_parameters
    from plankdiff.diffusion.train import DiffusionTrainer

    try:
        config = load_config(
            preset,
            max_minutes=max_minutes,
            max_tflops=max_tflops,
            max_steps=max_steps,
            batch_size=batch_size,
            seed=seed,
            checkpoint_every=checkpoint_every,
            sample_every=sample_every,
            precision=precision,
        )
    except ValueError as error:
        fail(console, error)
    dataset = open_dataset(console, data)
    from plankdiff.data.lineage import pretraining_rows

    if split:
        load_split(console, dataset, split)  # an unknown split gets the list of existing ones
    try:
        rows = pretraining_rows(dataset, split or None, all_rows=all_rows)
    except (ValueError, FileNotFoundError) as error:
        fail(console, error)
    trainer = DiffusionTrainer(config=config, dataset=dataset, out=out, rows=rows, resume=resume)
    parameters = count_parameters(trainer.model)
    say_device(console, trainer.device, precision=trainer.precision)
    console.print(
        f"{config.preset}: {parameters / 1e6:.2f}M parameters, {len(trainer.images)} images → {out}"
    )
    train_and_report(trainer, console)


def train_and_report(trainer, console: Console) -> None:
    """Run a trainer (diffusion or baseline: both return a `TrainResult`) and say how it ended;
    exit code 2 when the loss diverged, 1 for a run that could not start or resume, 143 when a
    signal stopped it (after its checkpoint), so schedulers and scripts do not take it as finished."""
    from plankdiff.training import TrainingDiverged

    try:
        result = trainer.train()
    except TrainingDiverged as error:
        console.print(f"[red]stopped:[/red] {error}")
        raise typer.Exit(2) from None
    except (FileExistsError, ValueError) as error:
        fail(console, error)
    if result.stopped_by == "interrupt":  # a stop signal: the checkpoint is saved, the run is not done
        console.print(f"[yellow]interrupted[/yellow] at step {result.step}; continue it with --resume")
        raise typer.Exit(INTERRUPTED)
    console.print(
        f"[green]done[/green] ({result.stopped_by}): step {result.step}, {result.elapsed_minutes:.1f} min, "
        f"{result.images_seen} images seen, loss {result.last_loss:.4f}"
    )


@app.command("sample")
def sample_command(
    run: Path = typer.Argument(..., help="diffusion run folder, or a diffusers UNet2DModel folder"),
    n: int = typer.Option(64, "--n", min=1, help="number of images"),
    steps: int = typer.Option(50, "--steps", min=1, max=1000, help="DDIM denoising steps (1–1000)"),
    seed: int = typer.Option(0, "--seed", help="random seed of the sampling noise"),
    out: Path = typer.Option(None, "--out", help="PNG path (default: RUN/samples/final.png)"),
) -> None:
    """Draw a PNG grid of samples with the EMA denoiser.

    Example: plankdiff diffusion sample runs/ddpm --n 16 --steps 50
    """
    from plankdiff.diffusion.model import load_backbone
    from plankdiff.diffusion.train import sample_images, save_grid

    unet, scheduler = load_backbone(run)
    path = save_grid(
        sample_images(unet, scheduler, n=n, steps=steps, seed=seed), out or run / "samples" / "final.png"
    )
    console.print(f"{n} samples ({steps} DDIM steps) → {path}")


@app.command("curve")
def curve_command(
    run: Path = typer.Argument(..., help="diffusion run folder"),
    out: Path = typer.Option(None, "--out", help="PNG path (default: RUN/loss_curve.png)"),
) -> None:
    """Plot the training loss (and images/s) logged in RUN/metrics.jsonl.

    Example: plankdiff diffusion curve runs/ddpm
    """
    path = plot_loss_curve(run / "metrics.jsonl", out or run / "loss_curve.png")
    console.print(f"loss curve → {path}")


def plot_loss_curve(metrics: Path, out: Path) -> Path:
    import pandas as pd
    from matplotlib.figure import Figure

    frame = pd.read_json(metrics, lines=True)
    fig = Figure(figsize=(7, 3.5))
    loss_axis = fig.add_subplot()
    loss_axis.plot(frame["images_seen"], frame["loss"], lw=1)
    loss_axis.set_yscale("log")
    loss_axis.set_xlabel("images seen")
    loss_axis.set_ylabel("ε-prediction MSE (log)")
    speed_axis = loss_axis.twinx()
    speed_axis.plot(frame["images_seen"], frame["images_per_s"], color="tab:orange", lw=0.8, alpha=0.6)
    speed_axis.set_ylabel("images/s", color="tab:orange")
    loss_axis.set_title(f"{metrics.parent.name}: {frame['elapsed_min'].iloc[-1]:.1f} min of training")
    fig.savefig(out, dpi=120, bbox_inches="tight")
    return out
