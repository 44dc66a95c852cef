"""How much of a training step's FLOPs the budget leaves uncounted on a CPU: attention.

Run by hand (not collected by pytest), e.g.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python bench/bench_attention_flops.py

`torch.utils.flop_counter.FlopCounterMode` has a formula for the CUDA attention kernels (flash,
efficient, cuDNN) but none for the CPU one (`aten._scaled_dot_product_flash_attention_for_cpu` and
its backward), so on a CPU the attention matrix products of the DDPM U-Net's attention blocks and of
MAE's ViT (encoder and decoder) are not in the training budget. This counts one training step
(forward and backward) of each twice on the CPU: as the trainers do (`count_flops`, the DDPM through
`training_step_flops`, MAE through its `training_step` as `BaselineTrainer` calls it), and with
`cpu_attention=True`, which gives the CPU kernel torch's CUDA formulas. Nothing is trained; FLOP
counts do not depend on the machine or its load. Writes `bench/results/attention_flops.md`.
"""

from __future__ import annotations

import argparse
import copy
from datetime import datetime, timezone
from pathlib import Path

import torch

from plankdiff.baselines.registry import get_method
from plankdiff.baselines.train import BaselineConfig
from plankdiff.budget import count_flops
from plankdiff.diffusion.config import load_config
from plankdiff.diffusion.model import build_unet
from plankdiff.diffusion.train import training_step_flops
from plankdiff.provenance import git_sha

SIZE, CHANNELS = 32, 1  # the `cpu` study's images


def ddpm_step(preset: str, cpu_attention: bool) -> tuple[int, int]:
    """(batch, FLOPs of one step) of the preset's U-Net, counted as `DiffusionTrainer` counts it."""
    config = load_config(preset)
    torch.manual_seed(0)
    network = build_unet(config, image_size=SIZE, channels=CHANNELS)
    batch = config.train.batch_size
    flops = training_step_flops(
        copy.deepcopy(network).float(),
        batch=batch,
        channels=CHANNELS,
        size=SIZE,
        device="cpu",
        cpu_attention=cpu_attention,
    )
    return batch, flops


def baseline_step(method: str, cpu_attention: bool) -> tuple[int, int]:
    """(batch, FLOPs of one step) of the method at its recipe's width and the default batch, as
    `BaselineTrainer._count_step_flops` counts it (the pixels' values do not change the count)."""
    config = BaselineConfig.for_method(method, max_steps=1)
    torch.manual_seed(0)
    network = get_method(method).build(channels=CHANNELS, size=SIZE, width=config.width)
    pixels = torch.randint(0, 256, (config.batch_size, CHANNELS, SIZE, SIZE), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    flops = count_flops(
        lambda: network.training_step(pixels, generator, progress=0.0).backward(),
        cpu_attention=cpu_attention,
    )
    return config.batch_size, flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu", help="the DDPM preset (default: cpu)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "attention_flops.md")
    args = parser.parse_args()
    rows = []
    for name, step in (
        (f"DDPM (`{args.preset}` preset)", lambda on: ddpm_step(args.preset, on)),
        ("MAE (ViT width 192, depth 6; decoder 128, depth 2)", lambda on: baseline_step("mae", on)),
    ):
        batch, counted = step(False)
        _, full = step(True)
        rows.append((name, batch, counted, full))
    lines = [
        "# Attention FLOPs the CPU training budget does not count",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, git {git_sha()}, torch {torch.__version__}, "
        f"{CHANNELS}×{SIZE}×{SIZE} images.",
        "",
        f"Command: `OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python bench/bench_attention_flops.py"
        f"{'' if args.preset == 'cpu' else f' --preset {args.preset}'}`",
        "",
        "One training step, forward and backward, counted on the CPU with",
        "`torch.utils.flop_counter.FlopCounterMode`: *counted* as the trainers count it (no formula for",
        "`aten._scaled_dot_product_flash_attention_for_cpu` and its backward), *with attention* giving",
        "that kernel torch's formulas for its CUDA attention kernels (`sdpa_flop_count`,",
        "`sdpa_backward_flop_count`; `count_flops(..., cpu_attention=True)`). Torch has formulas for",
        "the kernels attention runs on a GPU, so a GPU run's count should include attention (not",
        "measured here): the same TFLOP budget would then buy a CPU run of these models more steps.",
        "",
        "| model | batch | counted GFLOP/step | with attention GFLOP/step | uncounted share | with / counted |",
        "|---|---|---|---|---|---|",
    ]
    for name, batch, counted, full in rows:
        lines.append(
            f"| {name} | {batch} | {counted / 1e9:,.2f} | {full / 1e9:,.2f} | "
            f"{(full - counted) / full:.1%} | {full / counted:.3f} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
