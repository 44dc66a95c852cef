"""Training FLOPs per step and per image of the DDPM and every baseline, as the trainers count them.

Run by hand (not collected by pytest), e.g.

    .venv/bin/python bench/bench_flops.py --data cpu-ndsb-32

Builds each trainer on the prepared dataset (no step is taken: the trainers count one step's
forward and backward FLOPs with `torch.utils.flop_counter` when they are built, on the real
networks with their state restored) and writes `bench/results/flops.md`. FLOP counts do not depend
on how busy the machine is, so this needs no quiet cores. The per-image figures are what sets how
many images each method sees under a shared `max_tflops` budget (the `cpu` study: 25 TFLOP).
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from plankdiff.baselines.registry import get_method
from plankdiff.baselines.train import BaselineConfig, BaselineTrainer, TrainingRows
from plankdiff.data.prepare import PreparedDataset
from plankdiff.diffusion.config import load_config
from plankdiff.diffusion.train import DiffusionTrainer
from plankdiff.provenance import git_sha

METHODS = ("supervised", "simclr", "byol", "dino", "mae")
STUDY_TFLOPS = 25.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="prepared dataset name or folder")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "flops.md")
    args = parser.parse_args()
    dataset = PreparedDataset.open(args.data)
    rows = np.arange(min(600, len(dataset)))
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(args.preset, max_steps=1)
        ddpm = DiffusionTrainer(
            config=config, dataset=dataset, out=Path(tmp) / "ddpm", rows=rows, show_progress=False
        )
        table.append((f"DDPM (`{args.preset}` preset)", config.train.batch_size, ddpm.flops_per_step))
        for method in METHODS:
            uses_labels = get_method(method).uses_labels
            data = TrainingRows(
                rows=rows,
                labels=dataset.labels[rows] if uses_labels else None,
                classes=dataset.classes if uses_labels else None,
            )
            cfg = BaselineConfig.for_method(method, max_steps=1)
            trainer = BaselineTrainer(
                config=cfg, dataset=dataset, data=data, out=Path(tmp) / method, show_progress=False
            )
            table.append((method, cfg.batch_size, trainer.flops_per_step))
    shape = "×".join(map(str, dataset.images.shape[1:]))
    lines = [
        "# Training FLOPs per step and per image",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, git {git_sha()}, dataset {dataset.name} "
        f"(images {shape}).",
        "",
        f"Command: `.venv/bin/python bench/bench_flops.py --data {args.data}`",
        "",
        "Counted with `torch.utils.flop_counter.FlopCounterMode` on one training step, forward and backward",
        "(matrix products and convolutions; every network the method runs: both views, the momentum",
        "teacher, heads). Not a timing: the counts are the same on any machine.",
        "",
        f"| method | batch | GFLOP per step | GFLOP per image | images in {STUDY_TFLOPS:g} TFLOP |",
        "|---|---|---|---|---|",
    ]
    for name, batch, flops in table:
        per_image = flops / batch
        lines.append(
            f"| {name} | {batch} | {flops / 1e9:,.1f} | {per_image / 1e9:.2f} | "
            f"{STUDY_TFLOPS * 1e12 / per_image:,.0f} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
