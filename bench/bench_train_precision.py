"""Benchmark: training images/s in bf16 autocast against fp32, per method, in one run: the DDPM
(`cpu` preset, or `--preset`), the ResNet-18 methods (supervised, SimCLR, BYOL, DINO) and MAE.

Run by hand on IDLE cores (not collected by pytest; other jobs on the cores skew both columns and
the ratio), e.g.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_train_precision.py --data ndsb-32 --split long-tailed-s0

On a machine with CUDA every trainer runs on the GPU (as in training); `scripts/gpu_check.sh` runs
it there with `--preset paper` on 64 px NDSB.

Each method runs the real trainer's step (`plankdiff.training.Trainer.train_step`: views or noise,
forward and loss under autocast, backward, gradient clipping, AdamW, and for the DDPM the LR schedule
and EMA) on random batches of the split's train rows, never writing a run folder. fp32 and bf16
alternate for each method, `--repeats` times, each measurement `--warmup` untimed steps then
`--steps` timed ones; images/s is the median over the repeats (source images: SimCLR, BYOL and DINO
push two views of each through the backbone). Also records the final loss of each measurement, to
show both precisions train. Writes `bench/results/train_precision.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from plankdiff.baselines.train import BaselineConfig, BaselineTrainer, training_rows
from plankdiff.data.lineage import pretraining_rows
from plankdiff.data.prepare import PreparedDataset
from plankdiff.devices import default_device
from plankdiff.diffusion.config import load_config
from plankdiff.diffusion.train import DiffusionTrainer
from plankdiff.precision import device_has_bf16_units
from plankdiff.provenance import git_sha
from plankdiff.training import Trainer

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("ddpm", "supervised", "simclr", "byol", "dino", "mae")
PRECISIONS = ("fp32", "bf16")


def build(
    dataset: PreparedDataset,
    method: str,
    *,
    split: str,
    precision: str,
    out: Path,
    batch_size: int | None,
    preset: str,
) -> Trainer:
    if method == "ddpm":
        config = load_config(preset, precision=precision, sample_every=0, batch_size=batch_size)
        rows = pretraining_rows(dataset, split, all_rows=False)
        return DiffusionTrainer(config=config, dataset=dataset, out=out, rows=rows, show_progress=False)
    config = BaselineConfig.for_method(method, max_steps=10**9, precision=precision, batch_size=batch_size)
    data = training_rows(dataset, method=method, split=split)
    return BaselineTrainer(config=config, dataset=dataset, data=data, out=out, show_progress=False)


def measure(trainer: Trainer, *, steps: int, warmup: int) -> tuple[float, float]:
    """(images/s over the timed steps, last loss)."""
    batch = trainer.settings.batch_size
    loss = float("nan")
    for step in range(warmup + steps):
        if step == warmup:
            started = time.perf_counter()
        indices = torch.randint(0, len(trainer.images), (batch,), generator=trainer.generator)
        loss = float(trainer.train_step(indices))
    return steps * batch / (time.perf_counter() - started), loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="ndsb-32")
    parser.add_argument("--split", default="long-tailed-s0")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each measurement")
    parser.add_argument("--repeats", type=int, default=3, help="fp32/bf16 alternations per method")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--batch-size", type=int, default=None, help="default: each method's own")
    parser.add_argument("--preset", default="cpu", help="the DDPM's preset (configs/diffusion)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_precision.md")
    args = parser.parse_args()

    dataset = PreparedDataset.open(args.data)
    load_before = os.getloadavg()[0]  # other processes on the cores skew every number below
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for method in args.methods.split(","):
            trainers = {
                p: build(
                    dataset,
                    method,
                    split=args.split,
                    precision=p,
                    out=Path(scratch) / method / p,
                    batch_size=args.batch_size,
                    preset=args.preset,
                )
                for p in PRECISIONS
            }
            rates: dict[str, list[float]] = {p: [] for p in PRECISIONS}
            losses: dict[str, float] = {}
            for _ in range(args.repeats):
                for p, trainer in trainers.items():
                    rate, losses[p] = measure(trainer, steps=args.steps, warmup=args.warmup)
                    rates[p].append(rate)
            row = {
                "method": method,
                "batch": trainers["fp32"].settings.batch_size,
                **{f"{p}_images_per_s": statistics.median(rates[p]) for p in PRECISIONS},
                **{f"{p}_loss": losses[p] for p in PRECISIONS},
            }
            row["ratio"] = row["bf16_images_per_s"] / row["fp32_images_per_s"]
            print(json.dumps(row), flush=True)
            rows.append(row)

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    device = f"{torch.cuda.get_device_name()} (CPU {model})" if torch.cuda.is_available() else model
    bf16_units = device_has_bf16_units(default_device())
    command = "OMP_NUM_THREADS={} {} {}".format(
        os.environ.get("OMP_NUM_THREADS", "(unset)"), Path(sys.executable).name, " ".join(sys.argv)
    )
    lines = [
        "# Training throughput: bf16 autocast against fp32",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, git {git_sha()}, torch {torch.__version__}, "
        f"{device} (bf16 units: {'yes' if bf16_units else 'no'}), "
        f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores visible.",
        f"Data: {dataset.name} {list(dataset.images.shape[1:])}, split {args.split} train rows; "
        f"{f'batch {args.batch_size}' if args.batch_size else 'each method its own batch size'}; {args.steps} timed steps after {args.warmup} warm-up steps, fp32 and bf16 "
        f"alternating {args.repeats}×, median. 1-minute load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after.",
        "",
        f"Command: `{command}`",
        "",
        "| method | batch | fp32 images/s | bf16 images/s | bf16 / fp32 | last loss fp32 | last loss bf16 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = f"DDPM (`{args.preset}` preset)" if row["method"] == "ddpm" else row["method"]
        lines.append(
            f"| {name} | {row['batch']} | {row['fp32_images_per_s']:.1f} | {row['bf16_images_per_s']:.1f} "
            f"| {row['ratio']:.2f}× | {row['fp32_loss']:.4f} | {row['bf16_loss']:.4f} |"
        )
    lines += [
        "",
        "images/s: source images per second of one trainer step (SimCLR, BYOL and DINO run two views of",
        "each). bf16: autocast around the forward pass and the loss, float32 weights and optimiser state",
        "(`plankdiff.training`); `precision: auto` picks it only where the CPU or GPU has bf16 units.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
