"""Benchmark: training throughput of every baseline method on a prepared dataset (by default NDSB
at 32 px, batch 128), to size what each method learns from in a fixed time budget.

Run by hand (not collected by pytest), e.g.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_baselines.py --data ndsb-32 --split long-tailed-s0 --seconds 30

Each method runs the real trainer (`BaselineTrainer`: views, loss, backward, AdamW step) for
`--seconds` of its own time budget into a temporary run folder. Throughput is source images per
second of training time, after the first step (allocation and warm-up): SimCLR, BYOL and DINO make
two views of each image, so they push twice as many images through the backbone per source image.
Writes `bench/results/baselines_throughput.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from plankdiff.baselines import METHODS
from plankdiff.baselines.train import BaselineConfig, BaselineTrainer, training_rows
from plankdiff.data.prepare import PreparedDataset
from plankdiff.provenance import git_sha

ROOT = Path(__file__).resolve().parents[1]


def measure(dataset: PreparedDataset, method: str, *, split: str, seconds: float, batch_size: int) -> dict:
    data = training_rows(dataset, method=method, split=split)
    config = BaselineConfig.for_method(
        method, batch_size=batch_size, max_minutes=seconds / 60, log_every=1, checkpoint_every=10**9
    )
    with tempfile.TemporaryDirectory() as out:
        trainer = BaselineTrainer(config=config, dataset=dataset, data=data, out=out, show_progress=False)
        started = time.perf_counter()
        result = trainer.train()
        wall = time.perf_counter() - started
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    assert len(records) >= 2, f"{method}: fewer than 2 steps in {seconds} s; give more --seconds"
    first, last = records[0], records[-1]
    steady = (last["images_seen"] - first["images_seen"]) / (
        60 * (last["elapsed_min"] - first["elapsed_min"])
    )
    return {
        "method": method,
        "steps": result.step,
        "images_per_s": steady,
        "first_step_s": first["elapsed_min"] * 60,
        "train_s": result.elapsed_minutes * 60,
        "wall_s": wall,
        "loss": result.last_loss,
        "parameters": trainer.method.parameter_counts(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="ndsb-32")
    parser.add_argument("--split", default="long-tailed-s0")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--methods", default=",".join(sorted(METHODS)))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "baselines_throughput.md")
    args = parser.parse_args()

    dataset = PreparedDataset.open(args.data)
    load_before = os.getloadavg()[0]  # other processes on the cores skew every number below
    rows = []
    for method in args.methods.split(","):
        row = measure(dataset, method, split=args.split, seconds=args.seconds, batch_size=args.batch_size)
        print(json.dumps(row), flush=True)
        rows.append(row)

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    command = "OMP_NUM_THREADS={} {} {}".format(
        os.environ.get("OMP_NUM_THREADS", "(unset)"), Path(sys.executable).name, " ".join(sys.argv)
    )
    lines = [
        "# Baseline training throughput",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, git {git_sha()}, torch {torch.__version__}, "
        f"{device}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores visible.",
        f"Data: {dataset.name} {list(dataset.images.shape[1:])}, split {args.split} train rows; "
        f"batch {args.batch_size}; {args.seconds:g} s of training time per method. "
        f"1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after.",
        "",
        f"Command: `{command}`",
        "",
        "| method | backbone params | trained params | steps | images/s | images in 20 min | first step (s) | last loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        counts = row["parameters"]
        lines.append(
            f"| {row['method']} | {counts['backbone'] / 1e6:.2f}M | {counts['trainable'] / 1e6:.2f}M | {row['steps']} "
            f"| {row['images_per_s']:.1f} | {row['images_per_s'] * 1200:,.0f} | {row['first_step_s']:.1f} "
            f"| {row['loss']:.4f} |"
        )
    lines += [
        "",
        "images/s: source images per second of training time after the first step (SimCLR, BYOL and DINO",
        "run two views of each). 'images in 20 min' extrapolates it to a 20-minute budget.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
