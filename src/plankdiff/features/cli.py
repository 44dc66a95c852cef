"""`plankdiff features …`: blocks, extract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from plankdiff.baselines.extract import extract_baseline_features, is_baseline_run
from plankdiff.data.prepare import PreparedDataset
from plankdiff.data.splits import Split
from plankdiff.diffusion.model import load_backbone
from plankdiff.features.blocks import list_blocks
from plankdiff.features.extract import DEFAULT_TIMESTEPS, ExtractionRequest, extract_features, model_hash
from plankdiff.features.raw import raw_pixel_store
from plankdiff.features.search import coarse_to_fine

PRECISION_HELP = "auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 (bf16 autocast on the CPU too)"
app = typer.Typer(no_args_is_help=True, add_completion=False)
console = Console()


def _ints(text: str, option: str = "--timesteps") -> tuple[int, ...]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if not v.lstrip("-").isdigit()]
    if bad:
        raise ValueError(f"{option} {text!r}: {', '.join(map(repr, bad))} is not an integer")
    return tuple(int(v) for v in values)


@app.command("blocks")
def blocks_command(
    run: Path = typer.Argument(..., help="diffusion run folder or diffusers UNet2DModel folder"),
    sub_blocks: bool = typer.Option(False, "--sub-blocks", help="also each ResNet and attention layer"),
) -> None:
    """List the hookable blocks with their channel counts and resolutions."""
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
    timesteps: str = typer.Option(",".join(map(str, DEFAULT_TIMESTEPS)), "--timesteps"),
    blocks: str = typer.Option("", "--blocks", help="comma-separated block names (default: all)"),
    pooling: str = typer.Option("avg", "--pooling", help="avg | avg2x2"),
    noise_draws: int = typer.Option(1, "--noise-draws"),
    orientations: int = typer.Option(1, "--orientations", help="1, or 8 to average over flips and rotations"),
    sub_blocks: bool = typer.Option(False, "--sub-blocks"),
    batch_size: int = typer.Option(128, "--batch-size"),
    split: str = typer.Option("", "--split", help="only the rows of this split (default: every row)"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
) -> None:
    """Extract pooled features of every (block, t) pair; resumes an interrupted run."""
    if is_baseline_run(run):  # `plankdiff baseline train`: its own blocks, t = None; --split, --batch-size
        # and --device apply, the other options are the diffusion model's
        baseline = PreparedDataset.open(data)
        store = extract_baseline_features(
            run, baseline, out=out, split=split or None, batch_size=batch_size, device=device
        )
        console.print(f"[green]{len(store.pairs)} pairs[/green] × {len(store.rows)} images → {out}")
        return
    # Checked before the model is loaded: a bad flag is reported at once.
    request = ExtractionRequest(
        timesteps=_ints(timesteps),
        blocks=tuple(b for b in blocks.split(",") if b) or None,
        pooling=pooling,
        noise_draws=noise_draws,
        orientations=orientations,
        sub_blocks=sub_blocks,
        batch_size=batch_size,
        precision=precision,
    )
    unet, scheduler = load_backbone(run)
    target = "cuda" if device == "auto" and _cuda() else ("cpu" if device == "auto" else device)
    unet = unet.to(target)
    dataset = PreparedDataset.open(data)
    rows = None
    if split:
        chosen = Split.load(dataset, split)
        rows = sorted(set().union(*(set(chosen.indices(s).tolist()) for s in ("train", "val", "test"))))
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
    console.print(f"[green]{len(store.pairs)} pairs[/green] × {len(store.rows)} images → {out}")


@app.command("search")
def search_command(
    run: Path = typer.Argument(..., help="diffusion run folder or diffusers UNet2DModel folder"),
    data: str = typer.Argument(..., help="prepared dataset name or folder"),
    split: str = typer.Option(..., "--split"),
    out: Path = typer.Option(..., "--out"),
    timesteps: str = typer.Option(",".join(map(str, DEFAULT_TIMESTEPS)), "--timesteps"),
    per_class_train: int = typer.Option(20, "--per-class-train"),
    per_class_val: int = typer.Option(10, "--per-class-val"),
    keep_timesteps: int = typer.Option(2, "--keep-timesteps"),
    orientations: int = typer.Option(1, "--orientations"),
    keep_blocks: int = typer.Option(0, "--keep-blocks", help="fine pass: only the k best blocks (0: all)"),
    fine_orientations: int = typer.Option(
        0, "--fine-orientations", help="fine pass: 1 or 8 orientations (0: as --orientations)"
    ),
    batch_size: int = typer.Option(128, "--batch-size"),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
) -> None:
    """Coarse-to-fine: full grid on a stratified subset, the best timesteps on every image."""
    unet, scheduler = load_backbone(run)
    dataset = PreparedDataset.open(data)
    result = coarse_to_fine(
        unet,
        scheduler,
        dataset,
        Split.load(dataset, split),
        out=out,
        model_id=model_hash(run),
        backbone=run,
        request=ExtractionRequest(
            timesteps=_ints(timesteps), orientations=orientations, batch_size=batch_size, precision=precision
        ),
        per_class_train=per_class_train,
        per_class_val=per_class_val,
        keep_timesteps=keep_timesteps,
        keep_blocks=keep_blocks or None,
        fine_orientations=fine_orientations or None,
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
    """Raw pixels (scaled to [0, 1]) as a feature store: the floor for every learned representation."""
    dataset = PreparedDataset.open(data)
    store = raw_pixel_store(dataset, rows=np.arange(len(dataset)), out=out)
    console.print(f"raw pixels of {len(store.rows)} images → {out}")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
