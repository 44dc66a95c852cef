"""Prepare throughput on NDSB: plankdiff's parallel `prepare` against a plain single-process PIL
loop doing the same work (read from the zip, decode, preprocess to 32×32), in one script.

    .venv/bin/python bench/bench_prepare.py [--source ../shared/datasets/ndsb.zip] [--limit N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from plankdiff.data.prepare import prepare
from plankdiff.data.preprocess import PreprocessParams, decode, preprocess
from plankdiff.data.sources import Collection


def plain_loop(source: Path, params: PreprocessParams) -> tuple[int, float]:
    collection = Collection(source)
    started = time.perf_counter()
    with zipfile.ZipFile(source) as archive:
        out = np.zeros((len(collection), 1, params.size, params.size), np.uint8)
        for i, item in enumerate(collection.items):
            image = decode(archive.read(collection.prefix + item.path))
            out[i] = preprocess(image, params, orig_size=(item.orig_width, item.orig_height)).pixels
    return len(collection), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=Path("../shared/datasets/ndsb.zip"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/prepare.md"))
    args = parser.parse_args()
    params = PreprocessParams(size=32)
    n, plain_seconds = plain_loop(args.source, params)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        dataset = prepare(
            args.source, name="bench", size=32, out_dir=Path(tmp) / "bench", show_progress=False
        )
        ours_seconds = time.perf_counter() - started
        assert len(dataset) == n, f"prepare kept {len(dataset)} of {n} images"
    lines = [
        "# Prepare throughput, NDSB (30,336 images → 32×32, fit, 1 channel)",
        "",
        "Command: `.venv/bin/python bench/bench_prepare.py`",
        f"Machine: {os.cpu_count()} cores. Both sides include reading the zip, decoding and preprocessing;",
        "plankdiff's side also hashes the zip, writes the memory-mapped array and the metadata.",
        "",
        "| loop | seconds | images/s |",
        "|---|---|---|",
        f"| plain single-process PIL loop | {plain_seconds:.1f} | {n / plain_seconds:.0f} |",
        f"| `plankdiff.data.prepare` ({os.cpu_count()} workers) | {ours_seconds:.1f} | {n / ours_seconds:.0f} |",
        "",
        f"Ratio (plankdiff / plain): **{plain_seconds / ours_seconds:.2f}×** images/s.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
