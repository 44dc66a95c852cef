"""Classify new images with an exported classifier: folders, zip archives and raw IFCB bins.

Every image goes through exactly the training path: `decode`, then `preprocess` with the card's
parameters (size, mode, polarity, channels, and for keep-scale the dataset's stored common
factor), then the card's (block, t) features, then the probe. The noise at each t is seeded by
the image's path inside its input, so the noise an image gets does not depend on batching, order,
the number of processes or where the folder was copied to.

Inputs and what they give (`sample` is what counts.csv counts per):
- a folder or `.zip` (any depth): sample = its name; `true_label` = the top-level folder an image
  sits in (the `<class>/<image>` layout `plankdiff data prepare` reads), blank for images at the
  top level. A `manifest.csv` (as in the shared datasets) supplies labels and original sizes;
  without one, an image's own size is its original size (right for files as the camera wrote them).
  Pass one input per sample to get counts per sample.
- IFCB bins (one bin, or a folder searched recursively; bins win over any image files beside them):
  sample = the bin; a bin that cannot be read is one line of skipped.csv, and the others go on.

`sample_by="day"` splits each input's sample by the UTC capture day in the file names (SPC and
IFCB name their images with it; see `plankdiff.data.timestamps`): `<input>/2020-03-14`, and
`<input>/unknown time` where the name carries none. `captured_from`/`captured_to` keep only the
images captured in that date range (inclusive); images without a capture time are then left out.

Outputs, beside `out_csv`: `predictions.csv` (one row per image), `counts.csv` (sample, class,
count; `unclassified` is a class of its own) and `skipped.csv` (every image or bin that could not
be read, with the reason). Under `accelerate launch`, process i takes images i, i+n, i+2n, … and
writes its own parts; the main process merges them back into input order.
"""

from __future__ import annotations

import csv
import heapq
import os
import time
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path, PurePosixPath
from typing import get_args

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from PIL import Image

from plankdiff.choices import SampleBy
from plankdiff.data.ifcb import IfcbCollection, IfcbError, find_bins, is_ifcb_source, parse_roi_name
from plankdiff.data.preprocess import ImageRejected, decode, preprocess
from plankdiff.data.sources import IMAGE_SUFFIXES, MANIFEST_NAME, Collection, SourceError
from plankdiff.data.timestamps import capture_time
from plankdiff.deploy.export import DeployedClassifier, image_seed
from plankdiff.progress import progress_bar

TOP_K = 3
SAMPLE_BY: tuple[str, ...] = get_args(SampleBy)
UNKNOWN_TIME = "unknown time"
PREDICTION_COLUMNS = ["sample", "source", "top1", "top2", "top3", "p1", "p2", "p3", "decision", "true_label"]
SKIPPED_COLUMNS = ["sample", "source", "reason"]
COUNT_COLUMNS = ["sample", "class", "count"]
# What a damaged file can raise on its way to pixels; anything else is a bug and stops the run.
READ_ERRORS = (ImageRejected, OSError, KeyError, ValueError, zipfile.BadZipFile, Image.DecompressionBombError)


class _Tree:
    """Images under a folder or inside a zip, at any depth, read in place."""

    def __init__(self, source: Path):
        self.source = source
        self.is_archive = source.is_file()
        self._zip: zipfile.ZipFile | None = None
        if self.is_archive:
            names = [n for n in self.archive.namelist() if not n.endswith("/")]
        else:
            names = [
                p.relative_to(source).as_posix()
                for p in sorted(source.rglob("*"))
                if p.is_file() and not p.is_symlink()
            ]
        # Our archives wrap everything in one folder named after the dataset (`ndsb/<class>/…`).
        self.prefix = _common_wrapper(names) if self.is_archive else ""
        inner = [n[len(self.prefix) :] for n in names]
        self.has_manifest = MANIFEST_NAME in inner
        self.names = sorted(n for n in inner if PurePosixPath(n).suffix.lower() in IMAGE_SUFFIXES)

    @property
    def archive(self) -> zipfile.ZipFile:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.source)
        return self._zip

    def read_image(self, name: str) -> Image.Image:
        if self.is_archive:
            return decode(self.archive.read(self.prefix + name))
        return decode((self.source / name).read_bytes())

    def reopen(self) -> None:
        """Close the archive; the next read opens it again."""
        if self._zip is not None:
            self._zip.close()
            self._zip = None


class _Bin:
    """One IFCB bin, opened on first read and dropped by `reopen`, so that a run over thousands of
    bins holds one bin's ADC table and file handle at a time, not all of them."""

    def __init__(self, stem: Path):
        self.stem = stem
        self._collection: IfcbCollection | None = None

    def read_image(self, name: str) -> Image.Image:
        if self._collection is None:
            self._collection = IfcbCollection(self.stem)
        return self._collection.read_image(name)

    def reopen(self) -> None:
        if self._collection is not None:
            self._collection.reopen()
            self._collection = None


def _common_wrapper(names: list[str]) -> str:
    """The single top folder every member sits in, when below it there are folders or a manifest."""
    tops = {n.split("/")[0] for n in names}
    if len(tops) != 1 or not all("/" in n for n in names):
        return ""
    top = tops.pop()
    inner = [n[len(top) + 1 :] for n in names]
    return top + "/" if MANIFEST_NAME in inner or any("/" in n for n in inner) else ""


@dataclass(frozen=True)
class InputImage:
    """One image to classify (or, with `problem`, a bin known to be unreadable)."""

    sample: str
    source: str  # shown in the CSVs: a file, `archive.zip::member`, or `<bin>.roi::<roi>`
    key: str  # its path inside its input; seeds the noise
    true_label: str
    reader: int  # index into the readers list
    member: str  # what the reader reads
    orig_size: tuple[int, int] | None = None
    problem: str = ""


def _ifcb_images(source: Path, readers: list) -> list[InputImage]:
    """One item per ROI; a bin that cannot be read becomes one `problem` item, and the others go on."""
    images = []
    for stem in [b.stem_path for b in find_bins(source)] if source.is_dir() else [source]:
        try:
            collection = IfcbCollection(stem)
        except IfcbError as error:
            images.append(
                InputImage(stem.with_suffix("").name, str(stem), "", "", -1, "", problem=str(error))
            )
            continue
        readers.append(_Bin(stem))
        roi_file = collection.bins[0].file(".roi")
        for item in collection.items:
            name, roi = parse_roi_name(item.path)
            size = (item.orig_width, item.orig_height)
            images.append(
                InputImage(name.stem, f"{roi_file}::{roi}", item.path, "", len(readers) - 1, item.path, size)
            )
    return images


def _tree_images(source: Path, readers: list) -> list[InputImage]:
    """A folder or zip; with a manifest, `Collection` reads it (labels and original sizes from there)."""
    sample = source.stem if source.is_file() else source.resolve().name
    tree = _Tree(source)
    tree.reopen()  # listing is done; reading opens the archive again, in the process that reads
    if tree.has_manifest:
        collection = Collection(source)
        readers.append(collection)
        images = []
        for item in collection.items:
            size = (item.orig_width, item.orig_height) if item.orig_width and item.orig_height else None
            shown = f"{source}::{item.path}" if collection.is_archive else str(source / item.path)
            images.append(InputImage(sample, shown, item.path, item.label, len(readers) - 1, item.path, size))
        return images
    readers.append(tree)
    return [
        InputImage(
            sample=sample,
            source=f"{source}::{name}" if tree.is_archive else str(source / name),
            key=name,
            true_label=name.split("/")[0] if "/" in name else "",
            reader=len(readers) - 1,
            member=name,
        )
        for name in tree.names
    ]


def list_inputs(
    inputs: Sequence[Path],
    *,
    sample_by: SampleBy = "input",
    captured_from: date | None = None,
    captured_to: date | None = None,
) -> tuple[list[InputImage], list]:
    """Every image of every input, in a fixed order (the same on every process), and their readers.

    An input that is missing or of an unknown kind stops the run here, before any work: that is a
    typo, not a damaged image.
    """
    assert sample_by in SAMPLE_BY, f"sample_by must be one of {SAMPLE_BY}, got {sample_by!r}"
    images, readers = _list_all(inputs)
    if sample_by == "input" and captured_from is None and captured_to is None:
        return images, readers
    kept = []
    for image in images:
        moment = capture_time(image.key) if image.key else None
        day = moment.date() if moment else None
        outside = (
            day is None or (captured_from and day < captured_from) or (captured_to and day > captured_to)
        )
        if (captured_from or captured_to) and not image.problem and outside:
            continue
        if sample_by == "day" and not image.problem:
            image = replace(image, sample=f"{image.sample}/{day.isoformat() if day else UNKNOWN_TIME}")
        kept.append(image)
    return kept, readers


def _list_all(inputs: Sequence[Path]) -> tuple[list[InputImage], list]:
    images: list[InputImage] = []
    readers: list = []
    for source in map(Path, inputs):
        if not source.exists():
            raise SourceError(f"{source}: no such file or folder")
        if is_ifcb_source(source):
            images += _ifcb_images(source, readers)
        elif source.is_dir() or zipfile.is_zipfile(source):
            images += _tree_images(source, readers)
        else:
            raise SourceError(f"{source}: not a folder, a zip archive or an IFCB bin")
    return images, readers


@dataclass
class PredictionRun:
    predictions: Path
    counts: Path
    skipped: Path
    n_predicted: int
    n_skipped: int
    seconds: float


def _batches(items: list[tuple[int, InputImage]], size: int) -> Iterator[list[tuple[int, InputImage]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _part(path: Path, index: int) -> Path:
    return path.with_name(f".{path.stem}.part{index}{path.suffix}")


def predict_share(
    classifier: DeployedClassifier,
    images: list[InputImage],
    readers: list,
    out_csv: Path,
    *,
    process_index: int,
    num_processes: int,
    batch_size: int,
    show_progress: bool,
) -> None:
    """Classify images process_index, process_index + n, … into this process's CSV parts.

    Memory is bounded by one batch: rows are written as each batch finishes, and counts are kept
    per (sample, class) only.
    """
    params, class_names = classifier.params, classifier.classes
    mine = [(i, images[i]) for i in range(process_index, len(images), num_processes)]
    counts: Counter[tuple[str, str]] = Counter()
    started = time.perf_counter()
    with (
        open(_part(out_csv, process_index), "w", newline="") as predictions_file,
        open(_part(out_csv.with_name("skipped.csv"), process_index), "w", newline="") as skipped_file,
        progress_bar("predict", total=len(mine), enabled=show_progress) as advance,
    ):
        predictions, skipped = csv.writer(predictions_file), csv.writer(skipped_file)
        done, reading = 0, -1
        for batch in _batches(mine, batch_size):
            pixels, kept = [], []
            for position, image in batch:
                if image.problem:
                    skipped.writerow([position, image.sample, image.source, image.problem])
                    continue
                if image.reader != reading:  # inputs come one after another: release the last one
                    if reading >= 0:
                        readers[reading].reopen()
                    reading = image.reader
                try:
                    decoded = readers[image.reader].read_image(image.member)
                    pixels.append(preprocess(decoded, params, orig_size=image.orig_size).pixels)
                except READ_ERRORS as error:
                    reason = str(error) if isinstance(error, ImageRejected) else f"could not read: {error}"
                    skipped.writerow([position, image.sample, image.source, reason])
                    continue
                kept.append((position, image))
            if kept:
                proba = classifier.predict_proba(
                    np.stack(pixels), np.array([image_seed(i.key) for _, i in kept])
                )
                for (position, image), row, decision in zip(
                    kept, proba, classifier.decisions(proba), strict=True
                ):
                    top = np.argsort(-row, kind="stable")[:TOP_K]
                    names = [class_names[k] for k in top] + [""] * (TOP_K - len(top))
                    probabilities = [f"{row[k]:.6f}" for k in top] + [""] * (TOP_K - len(top))
                    predictions.writerow(
                        [
                            position,
                            image.sample,
                            image.source,
                            *names,
                            *probabilities,
                            decision,
                            image.true_label,
                        ]
                    )
                    counts[image.sample, decision] += 1
            done += len(batch)
            advance(len(batch), img_per_s=done / max(time.perf_counter() - started, 1e-9))
    if reading >= 0:
        readers[reading].reopen()
    with open(_part(out_csv.with_name("counts.csv"), process_index), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([sample, name, count] for (sample, name), count in counts.items())


def _merge(path: Path, columns: list[str], num_processes: int) -> int:
    """Interleave the parts back into input order (each is sorted by position); returns the row count."""
    parts = [_part(path, i) for i in range(num_processes)]
    handles = [open(p, newline="") for p in parts]  # noqa: SIM115 - closed below, after the merge
    try:
        readers = [((int(row[0]), row[1:]) for row in csv.reader(h)) for h in handles]
        rows = 0
        with open(path, "w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(columns)
            for _, row in heapq.merge(*readers, key=lambda entry: entry[0]):
                writer.writerow(row)
                rows += 1
    finally:
        for handle in handles:
            handle.close()
    for part in parts:
        part.unlink()
    return rows


def merge_parts(out_csv: Path, *, num_processes: int) -> tuple[int, int]:
    """Write predictions.csv, skipped.csv and counts.csv from every process's parts; remove the parts."""
    n_predicted = _merge(out_csv, PREDICTION_COLUMNS, num_processes)
    n_skipped = _merge(out_csv.with_name("skipped.csv"), SKIPPED_COLUMNS, num_processes)
    counts_path = out_csv.with_name("counts.csv")
    counts: Counter[tuple[str, str]] = Counter()
    for index in range(num_processes):
        part = _part(counts_path, index)
        with open(part, newline="") as handle:
            for sample, name, count in csv.reader(handle):
                counts[sample, name] += int(count)
        part.unlink()
    with open(counts_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COUNT_COLUMNS)
        ordered = sorted(counts.items(), key=lambda entry: (entry[0][0], -entry[1], entry[0][1]))
        writer.writerows([sample, name, count] for (sample, name), count in ordered)
    return n_predicted, n_skipped


def predict(
    classifier: DeployedClassifier,
    inputs: Sequence[Path],
    out_csv: Path,
    *,
    batch_size: int = 64,
    device: str | None = None,
    show_progress: bool = True,
    sample_by: SampleBy = "input",
    captured_from: date | None = None,
    captured_to: date | None = None,
) -> PredictionRun:
    """Classify every image of `inputs` into `out_csv` (predictions.csv), counts.csv and skipped.csv.

    device: None takes this process's device from accelerate (its GPU under `accelerate launch`,
    else CUDA when present, else CPU). On one process this is a plain run.
    """
    assert batch_size >= 1, f"batch_size must be at least 1, got {batch_size}"
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    # Without cpu=True accelerate ignores a multi-process CPU launch and every process thinks it is alone.
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    assert state.num_processes == launched, (
        f"{launched} processes were launched but accelerate sees {state.num_processes}; they would overwrite "
        "each other's files"
    )
    classifier.to(device if device is not None else state.device)
    started = time.perf_counter()
    images, readers = list_inputs(
        inputs, sample_by=sample_by, captured_from=captured_from, captured_to=captured_to
    )
    predict_share(
        classifier,
        images,
        readers,
        out_csv,
        process_index=state.process_index,
        num_processes=state.num_processes,
        batch_size=batch_size,
        show_progress=show_progress and state.is_main_process,
    )
    state.wait_for_everyone()
    totals = [merge_parts(out_csv, num_processes=state.num_processes) if state.is_main_process else None]
    n_predicted, n_skipped = broadcast_object_list(totals)[0]
    return PredictionRun(
        predictions=out_csv,
        counts=out_csv.with_name("counts.csv"),
        skipped=out_csv.with_name("skipped.csv"),
        n_predicted=n_predicted,
        n_skipped=n_skipped,
        seconds=time.perf_counter() - started,
    )
