"""`plankdiff features …`: blocks, extract."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from plankdiff.choices import Pooling, Precision
from plankdiff.cli_support import (
    device_option,
    fail,
    int_list,
    load_split,
    open_dataset,
    resolve_device,
    say_device,
    switch,
)
from plankdiff.features.spec import SearchSpec

# `features search` and the study's `features:` block share one typed object and its defaults.
SEARCH = SearchSpec()
DEFAULT_TIMESTEPS = ",".join(map(str, SEARCH.timesteps))
TIMESTEPS_HELP = "comma-separated diffusion timesteps t, each in 0–999 (0: nearly clean, 999: pure noise)"
PRECISION_HELP = "auto: bf16 autocast on CUDA, fp32 on the CPU; fp32; bf16: bf16 autocast on the CPU too"
app = typer.Typer(no_args_is_help=True, add_completion=False)
console = Console()


def _timesteps(text: str) -> tuple[int, ...]:
    values = int_list("--timesteps", text)
    if not values or not all(0 <= t <= 999 for t in values):
        raise typer.BadParameter(f"{text!r}: give timesteps in 0–999", param_hint="--timesteps")
    return values


@app.command("blocks")
def blocks_command(
    run: Path = typer.Argument(..., help="diffusion run folder or diffusers UNet2DModel folder"),
    sub_blocks: bool = switch(False, "--sub-blocks", help="also each ResNet and attention layer"),
) -> None:
    """List the hookable blocks with their channel counts and resolutions.

    Example: plankdiff features blocks runs/ddpm
    """
    from plankdiff.diffusion.model import load_backbone
    from plankdiff.features.blocks import list_blocks

    unet, _ = load_backbone(run)
    table = Table(title=str(run))
    for column in ("block", "module", "channels", "resolution"):
        table.add_column(column)
    for block in list_blocks(unet, sub_blocks=sub_blocks):
        table.add_row(block.name, block.module, str(block.channels), f"{block.resolution}×{block.resolution}")
    console.print(table)


@app.command("extract")
def extract_command(
    run: Path = typer.Argument(..., help="diffusion run folder or diffusers UNet2DModel folder"),
    data: str = typer.Argument(..., help="prepared dataset name or folder"),
    out: Path = typer.Option(..., "--out", help="feature store folder"),
    timesteps: str = typer.Option(DEFAULT_TIMESTEPS, "--timesteps", help=TIMESTEPS_HELP),
    blocks: str = typer.Option("", "--blocks", help="comma-separated block names (default: all)"),
    pooling: Pooling = typer.Option(
        "avg", "--pooling", help="avg: global average; avg2x2: average over 2×2 quadrants (4× the width)"
    ),
    noise_draws: int = typer.Option(1, "--noise-draws", min=1, help="noise samples averaged per image"),
    orientations: int = typer.Option(1, "--orientations", help="1, or 8 to average over flips and rotations"),
    sub_blocks: bool = switch(False, "--sub-blocks", help="also each ResNet and attention layer"),
    batch_size: int = typer.Option(128, "--batch-size", min=1, help="images per forward pass"),
    split: str = typer.Option("", "--split", help="only the rows of this split (default: every row)"),
    device: str = device_option(help="auto: CUDA when there is one, else the CPU; cuda:N: GPU N"),
    precision: Precision = typer.Option("auto", "--precision", help=PRECISION_HELP),
) -> None:
    """Extract pooled features of every (block, t) pair; resumes an interrupted run.

    Example: plankdiff features extract runs/ddpm ndsb --split long-tailed-s0 --timesteps 5,25 --out cache/features/ddpm
    """
    from plankdiff.baselines.extract import extract_baseline_features, is_baseline_run

    request_timesteps = _timesteps(timesteps)
    target = resolve_device(console, device)
    if is_baseline_run(run):  # `plankdiff baseline train`: its own blocks, t = None; --split, --batch-size
        # and --device apply, the other options are the diffusion model's
        baseline = open_dataset(console, data)
        if split:
            load_split(console, baseline, split)
        say_device(console, target)
        try:
            store = extract_baseline_features(
                run, baseline, out=out, split=split or None, batch_size=batch_size, device=target
            )
        except (FileExistsError, FileNotFoundError, ValueError) as error:
            fail(console, error)
        console.print(f"[green]{len(store.pairs)} pairs[/green] × {len(store.rows)} images → {out}")
        return
    from plankdiff.diffusion.model import load_backbone
    from plankdiff.features.extract import ExtractionRequest, extract_features, model_hash

    dataset = open_dataset(console, data)
    rows = None
    if split:
        chosen = load_split(console, dataset, split)
        rows = sorted(set().union(*(set(chosen.indices(s).tolist()) for s in ("train", "val", "test"))))
    unet, scheduler = load_backbone(run, device=target)
    say_device(console, target)
    request = ExtractionRequest(
        timesteps=request_timesteps,
        blocks=tuple(b for b in blocks.split(",") if b) or None,
        pooling=pooling,
        noise_draws=noise_draws,
        orientations=orientations,
        sub_blocks=sub_blocks,
        batch_size=batch_size,
        precision=precision,
    )
    try:
        store = extract_features(
            unet,
            scheduler,
            dataset,
            out=out,
            request=request,
            rows=rows,
            model_id=model_hash(run),
            backbone=run,
        )
    except FileExistsError as error:
        fail(console, error)
    console.print(f"[green]{len(store.pairs)} pairs[/green] × {len(store.rows)} images → {out}")


@app.command("search")
def search_command(
    run: Path = typer.Argument(..., help="diffusion run folder or diffusers UNet2DModel folder"),
    data: str = typer.Argument(..., help="prepared dataset name or folder"),
    split: str = typer.Option(..., "--split", help="split name, e.g. long-tailed-s0"),
    out: Path = typer.Option(..., "--out", help="folder for the coarse and fine feature stores"),
    timesteps: str = typer.Option(DEFAULT_TIMESTEPS, "--timesteps", help=TIMESTEPS_HELP),
    per_class_train: int = typer.Option(
        SEARCH.per_class_train, "--per-class-train", min=1, help="coarse pass: train images per class"
    ),
    per_class_val: int = typer.Option(
        SEARCH.per_class_val, "--per-class-val", min=1, help="coarse pass: val images per class"
    ),
    keep_timesteps: int = typer.Option(
        SEARCH.keep_timesteps, "--keep-timesteps", min=1, help="fine pass: the k best timesteps"
    ),
    orientations: int = typer.Option(1, "--orientations", help="1, or 8 to average over flips and rotations"),
    keep_blocks: int = typer.Option(
        SEARCH.keep_blocks,
        "--keep-blocks",
        min=1,
        help="fine pass: only the k best blocks (default: every block)",
    ),
    fine_orientations: int = typer.Option(
        None, "--fine-orientations", help="fine pass: 1 or 8 orientations (default: as --orientations)"
    ),
    batch_size: int = typer.Option(SEARCH.batch_size, "--batch-size", min=1, help="images per forward pass"),
    precision: Precision = typer.Option("auto", "--precision", help=PRECISION_HELP),
) -> None:
    """Coarse-to-fine: full grid on a stratified subset, the best timesteps on every image.

    Example: plankdiff features search runs/ddpm ndsb --split long-tailed-s0 --keep-blocks 3 --out cache/features/search
    """
    from plankdiff.diffusion.model import load_backbone
    from plankdiff.features.extract import ExtractionRequest, model_hash
    from plankdiff.features.search import coarse_to_fine

    request_timesteps = _timesteps(timesteps)
    dataset = open_dataset(console, data)
    chosen = load_split(console, dataset, split)
    unet, scheduler = load_backbone(run)
    say_device(console, next(unet.parameters()).device)
    result = coarse_to_fine(
        unet,
        scheduler,
        dataset,
        chosen,
        out=out,
        model_id=model_hash(run),
        backbone=run,
        request=ExtractionRequest(
            timesteps=request_timesteps, orientations=orientations, batch_size=batch_size, precision=precision
        ),
        per_class_train=per_class_train,
        per_class_val=per_class_val,
        keep_timesteps=keep_timesteps,
        keep_blocks=keep_blocks,
        fine_orientations=fine_orientations,
    )
    console.print(
        f"kept timesteps {result.kept_timesteps}, blocks {result.kept_blocks or 'all'}; best on the subset: {result.ranking.iloc[0]['pair']}"
    )
    console.print(f"seconds: {result.seconds} → {out}")


@app.command("raw")
def raw_command(
    data: str = typer.Argument(..., help="prepared dataset name or folder"),
    out: Path = typer.Option(..., "--out", help="feature store folder"),
) -> None:
    """Raw pixels (scaled to [0, 1]) as a feature store: the floor for every learned representation.

    Example: plankdiff features raw ndsb --out cache/features/raw
    """
    import numpy as np

    from plankdiff.features.raw import raw_pixel_store

    dataset = open_dataset(console, data)
    store = raw_pixel_store(dataset, rows=np.arange(len(dataset)), out=out)
    console.print(f"raw pixels of {len(store.rows)} images → {out}")
