"""Benchmark: batched `predict` against classifying image by image, on real NDSB images.

Run by hand from the repository root (not collected by pytest), e.g.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_predict.py

Takes `--n` real images spread over the classes of ../shared/datasets/ndsb.zip, written as a
`<class>/<file>` folder in a temporary directory, and a classifier exported from `--backbone` with
the preprocessing of the prepared dataset `--data`. The probe's weights are random (seeded): only
throughput is measured, and a linear probe's cost does not depend on its values. Each batch size
classifies the same images through the whole path (decode, preprocess, features, probe, CSV);
batch size 1 is "calling the model image by image". A warm-up run comes first so one-time costs
(loading, hooking the blocks) are not counted. Writes `bench/results/predict.md`.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import platform
import sys
import tempfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from plankdiff.data.prepare import PreparedDataset
from plankdiff.data.preprocess import preprocess
from plankdiff.deploy.export import export_classifier, load_classifier
from plankdiff.deploy.predict import list_inputs, predict
from plankdiff.diffusion.model import load_backbone
from plankdiff.features.blocks import list_blocks
from plankdiff.features.pairs import Pair
from plankdiff.probe.linear import LinearClassifier
from plankdiff.provenance import git_sha

ROOT = Path(__file__).resolve().parents[1]
NDSB = ROOT / ".." / "shared" / "datasets" / "ndsb.zip"


def write_images(folder: Path, n: int) -> None:
    """Every k-th image of the manifest (sorted by class), so all classes are represented."""
    with zipfile.ZipFile(NDSB) as archive:
        rows = list(csv.DictReader(io.StringIO(archive.read("ndsb/manifest.csv").decode("utf-8"))))
        step = len(rows) // n
        for row in rows[::step][:n]:
            target = folder / row["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(f"ndsb/{row['path']}"))


def random_probe(dim: int, n_classes: int) -> LinearClassifier:
    rng = np.random.default_rng(0)
    return LinearClassifier(
        mean=np.zeros(dim),
        std=np.ones(dim),
        weight=rng.normal(size=(n_classes, dim)) / np.sqrt(dim),
        bias=np.zeros(n_classes),
    )


def decode_rate(classifier, folder: Path) -> float:
    """Images per second of decode + preprocess alone: the part batching cannot speed up."""
    images, readers = list_inputs([folder])
    started = time.perf_counter()
    for image in images:
        preprocess(readers[image.reader].read_image(image.member), classifier.params)
    return len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--backbone", type=Path, default=ROOT / "runs" / "ndsb-cpu")
    parser.add_argument("--data", default="ndsb-32", help="prepared dataset: preprocessing and classes")
    parser.add_argument("--pair", action="append", default=None, help="default: dec2@16/t=25")
    parser.add_argument("--batch-sizes", default="1,32,128,512")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "predict.md")
    args = parser.parse_args()
    pairs = args.pair or ["dec2@16/t=25"]
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    assert sizes[0] == 1, "the first batch size is the image-by-image reference, 1"
    load_before = os.getloadavg()
    dataset = PreparedDataset.open(args.data)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_images(work / "ndsb-bench", args.n)
        folder = work / "ndsb-bench"
        # The probe's width under average pooling: the channel count of each pair's block.
        channels = {b.name: b.channels for b in list_blocks(load_backbone(args.backbone)[0])}
        dim = sum(channels[Pair.parse(p).block] for p in pairs)
        model = export_classifier(
            backbone_run=args.backbone,
            dataset=dataset,
            pairs=pairs,
            classifier=random_probe(dim, len(dataset.classes)),
            thresholds=None,
            metrics={"note": "random probe: throughput benchmark only"},
            out=work / "model",
        )
        classifier = load_classifier(model)
        predict(classifier, [folder], work / "warm" / "predictions.csv", batch_size=16, show_progress=False)
        seconds = {}
        for size in sizes:
            started = time.perf_counter()
            run = predict(
                classifier,
                [folder],
                work / f"b{size}" / "predictions.csv",
                batch_size=size,
                show_progress=False,
            )
            seconds[size] = time.perf_counter() - started
            assert run.n_predicted == args.n, f"{run.n_predicted} of {args.n} images predicted"
            print(f"batch {size}: {seconds[size]:.2f} s, {args.n / seconds[size]:.1f} img/s", flush=True)
        rate = decode_rate(classifier, folder)
    load_after = os.getloadavg()

    lines = [
        "# Predict benchmark: batched `predict` vs image by image",
        "",
        "- command: `OMP_NUM_THREADS=1 .venv/bin/python bench/bench_predict.py` (from the repository root)",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, git {git_sha()}",
        f"- machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python "
        f"{sys.version.split()[0]}, torch {torch.__version__} with {torch.get_num_threads()} thread(s), CPU",
        f"- load average (1/5/15 min) before: {'/'.join(f'{v:.2f}' for v in load_before)}, after: "
        f"{'/'.join(f'{v:.2f}' for v in load_after)}. Another job was competing for the 2 cores during the "
        "run: absolute rates are pessimistic; every batch size ran under the same conditions, one after another.",
        f"- images: {args.n} real NDSB files (every k-th of ../shared/datasets/ndsb.zip), as a `<class>/<file>` folder",
        f"- model: `{args.backbone.relative_to(ROOT) if args.backbone.is_relative_to(ROOT) else args.backbone}` "
        f"(EMA UNet), pairs {pairs} ({dim} features), preprocessing of `{dataset.name}` "
        f"({classifier.params.size}×{classifier.params.size} {classifier.params.mode}), random probe over "
        f"{len(dataset.classes)} classes",
        "- each row: the whole path (list, decode, preprocess, features, probe, CSV) over all images, once",
        "",
        "| batch size | seconds | images/s | × image by image |",
        "|---|---|---|---|",
    ]
    for size in sizes:
        lines.append(
            f"| {size} | {seconds[size]:.2f} | {args.n / seconds[size]:.1f} | {seconds[1] / seconds[size]:.2f} |"
        )
    best = min(sizes, key=seconds.get)
    lines += [
        "",
        f"- **batched / image by image: {seconds[1] / seconds[best]:.1f}×** (batch {best})",
        f"- decode + preprocess alone: {rate:.0f} images/s (so the denoiser, not the image reading, sets the pace)",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
