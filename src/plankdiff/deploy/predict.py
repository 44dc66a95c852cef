"""Classify new images with an exported classifier: folders, zip archives and raw IFCB bins.

Every image goes through exactly the training path: `decode`, then `preprocess` with the card's
parameters (size, mode, polarity, channels, and for keep-scale the dataset's stored common
factor), then the card's (block, t) features, then the probe. The noise at each t is seeded by
the image's path inside its input, so the noise an image gets does not depend on batching, order,
the number of processes or where the folder was copied to.

Inputs and what they give (`sample` is what counts.csv counts per):
- a folder or `.zip` (any depth): sample = its path relative to the inputs' root, shortened to its
  name when that is unique among the inputs (`a/x` and `b/x` stay two samples; a folder is never
  pooled with another named alike); `true_label` = the top-level folder an image
  sits in (the `<class>/<image>` layout `plankdiff data prepare` reads), blank for images at the
  top level. A `manifest.csv` (as in the shared datasets) supplies labels and original sizes;
  without one, an image's own size is its original size (right for files as the camera wrote them).
  Pass one input per sample to get counts per sample, or `sample_by="folder"`: each image's folder
  (relative to its input) is a sample. Images of several subfolders pooled into one sample are
  reported in `PredictionRun.notes` (are they classes or samples? the run cannot tell).
  Zip members with `..`, absolute paths or links refuse the whole archive (as `data prepare`
  does); a member over `MAX_MEMBER_BYTES` (read streamed) is skipped, never held in memory.
- IFCB bins (one bin, or a folder searched recursively; bins win over any image files beside them):
  sample = the bin id, images = its targets (split ROIs of old instruments stitched), with its
  `ml_analyzed` as the sample's volume; an empty bin is a sample with zero counts; a bin that
  cannot be read is one line of skipped.csv, and the others go on.

`sample_by="day"` splits each input's sample by the UTC capture day in the file names (SPC and
IFCB name their images with it; see `plankdiff.data.timestamps`): `<input>/2020-03-14`, and
`<input>/unknown time` where the name carries none. `captured_from`/`captured_to` keep only the
images captured in that date range (inclusive); images without a capture time are then left out.

Every image gets the classifier's open-set score (`ood_score` in predictions.csv, higher = less like
the training images); beyond the cut calibrated at export its decision is `unknown`, whatever its
posteriors say; else the top-1 class, or `unclassified` below that class's abstention threshold.
A classifier exported before open-set rejection has no score (the column is empty) and no `unknown`
decision; the run says so once (`PredictionRun.open_set_note`). One image's score rarely tells, but
a sample's share of `unknown` images does: counts_wide.csv gives each sample's `unknown_share`,
`shift_p` (one-sided Fisher exact test of that share against validation's) and `shift_alarm`
(`shift_p` below `SHIFT_ALARM_P`): a flagged sample is unlike the images the classifier was
calibrated on (another instrument, processing or community), and its counts should be checked.

Outputs, beside `out_csv`: `predictions.csv` (one row per image), `counts.csv` (sample, class,
count, every class of every sample, zeros kept; `unclassified` and `unknown` are classes of their own),
`counts_wide.csv` (one row per sample: volume_ml where known, n_images, a count column per class
and, where the volume is known, a `<class>_per_ml` column each) and `skipped.csv` (every image or
bin that could not be read, with the reason); with `output_format="ecotaxa"`, also `ecotaxa/`:
`ecotaxa_<out folder>.tsv` and every classified image as `<object_id>.png` beside it, the bundle
EcoTaxa imports (see `plankdiff.deploy.ecotaxa`). The previous run's outputs are removed when a run
starts and the new ones moved into place at the end, so a killed run never leaves old files that
look current. Under `accelerate launch`, process i takes images i, i+n, i+2n, … and
writes its own parts; the main process merges them back into input order.
"""

from __future__ import annotations

import csv
import heapq
import os
import shutil
import time
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path, PurePosixPath
from typing import get_args

import numpy as np
import pandas as pd
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from PIL import Image

from plankdiff.choices import OutputFormat, SampleBy
from plankdiff.data.ifcb import IfcbBin, IfcbCollection, IfcbError, find_bins, is_ifcb_source, parse_roi_name
from plankdiff.data.preprocess import ImageRejected, decode, log_size_features, preprocess
from plankdiff.data.sources import (
    IMAGE_SUFFIXES,
    MANIFEST_NAME,
    Collection,
    SourceError,
    _check_member,
    read_member,
)
from plankdiff.data.timestamps import UNKNOWN_TIME, capture_time
from plankdiff.deploy import ecotaxa
from plankdiff.deploy.calibrate import SHIFT_ALARM_P, OpenSet
from plankdiff.deploy.export import NO_OOD_SCORE, UNCLASSIFIED, UNKNOWN, DeployedClassifier, image_seed
from plankdiff.deploy.quantify import COUNTINGS, Counting, mix_reference, quantification_table, sample_counts
from plankdiff.progress import progress_bar

TOP_K = ecotaxa.TOP_K_COLUMNS
SAMPLE_BY: tuple[str, ...] = get_args(SampleBy)
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)
PREDICTION_COLUMNS = [
    "sample", "source", "top1", "top2", "top3", "p1", "p2", "p3", "ood_score", "decision", "true_label"
]  # fmt: skip
# Decisions that name no class: counted as classes of their own, never given a category in EcoTaxa.
NOT_DECIDED = (UNCLASSIFIED, UNKNOWN)
SKIPPED_COLUMNS = ["sample", "source", "reason"]
COUNT_COLUMNS = ["sample", "class", "count"]
# Binary parts of `--counts` runs: every classified image's posteriors (float32) and position (int64).
POSTERIORS, POSITIONS = "posteriors.f32", "positions.i64"
N_BOOT = 200  # bootstrap resamples per sample for the counts' 95 % intervals
# Every file a run writes into its folder: removed when a run starts, so none is left from an older one.
OUTPUT_FILES = (
    "predictions.csv",
    "counts.csv",
    "counts_wide.csv",
    "skipped.csv",
    "score.json",
    "count_comparison.csv",
    "quantification.csv",
)
QUANTIFICATION_FILE = "quantification.csv"
# What a damaged file can raise on its way to pixels; anything else is a bug and stops the run.
READ_ERRORS = (ImageRejected, OSError, KeyError, ValueError, zipfile.BadZipFile, Image.DecompressionBombError)


class _Tree:
    """Images under a folder or inside a zip, at any depth, read in place."""

    def __init__(self, source: Path):
        self.source = source
        self.is_archive = source.is_file()
        self._zip: zipfile.ZipFile | None = None
        if self.is_archive:
            infos = self.archive.infolist()
            for info in infos:
                _check_member(source, info)  # `..`, absolute and link members refuse the archive
            names = [info.filename for info in infos if not info.filename.endswith("/")]
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
            return decode(read_member(self.archive, self.prefix + name))
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
    volume_ml: float | None = None  # of the sample it belongs to (an IFCB bin's ml_analyzed)
    placeholder: bool = False  # no image: stands for a sample with nothing in it (an empty bin)


def _ifcb_images(source: Path, readers: list) -> list[InputImage]:
    """One item per ROI; a bin that cannot be read becomes one `problem` item, and the others go on."""
    images = []
    for stem in [b.stem_path for b in find_bins(source)] if source.is_dir() else [source]:
        if (empty := _empty_bin(stem)) is not None:
            images.append(empty)
            continue
        try:
            collection = IfcbCollection(stem)
        except IfcbError as error:
            images.append(
                InputImage(stem.with_suffix("").name, str(stem), "", "", -1, "", problem=str(error))
            )
            continue
        readers.append(_Bin(stem))
        ifcb_bin = collection.bins[0]
        roi_file, volume = ifcb_bin.file(".roi"), _volume(ifcb_bin)
        for item in collection.items:
            name, roi = parse_roi_name(item.path)
            size = (item.orig_width, item.orig_height)
            images.append(
                InputImage(
                    name.stem, f"{roi_file}::{roi}", item.path, "", len(readers) - 1, item.path, size,
                    volume_ml=volume,
                )
            )  # fmt: skip
    return images


def _volume(ifcb_bin: IfcbBin) -> float | None:
    """The bin's ml_analyzed, or None where the files do not give it (counts stay, per mL does not)."""
    try:
        volume = ifcb_bin.ml_analyzed
    except IfcbError:
        return None
    return volume if np.isfinite(volume) and volume > 0 else None


def _empty_bin(stem: Path) -> InputImage | None:
    """A placeholder for a readable bin without a single target, else None (let the reader decide)."""
    try:
        ifcb_bin = IfcbBin(stem)
        if ifcb_bin.targets():
            return None
    except IfcbError:
        return None
    name = ifcb_bin.name.stem
    return InputImage(
        name, str(stem), f"{name}_00000", "", -1, "", volume_ml=_volume(ifcb_bin), placeholder=True
    )


def _sample_ids(inputs: Sequence[Path]) -> list[str]:
    """Each input's path relative to the inputs' root, cut to the fewest trailing parts that keep
    every id unique (`x` alone; `a/x` and `b/x` for two folders named alike)."""
    parts = [
        Path(p).resolve().with_suffix("").parts if Path(p).is_file() else Path(p).resolve().parts
        for p in inputs
    ]
    for depth in range(1, max(map(len, parts), default=1) + 1):
        ids = ["/".join(p[-depth:]) for p in parts]
        clashes = {i for i in ids if ids.count(i) > 1}
        if not clashes or all(len(p) < depth + 1 for p, i in zip(parts, ids, strict=True) if i in clashes):
            return ids
    return ids


def _tree_images(source: Path, readers: list, sample: str) -> list[InputImage]:
    """A folder or zip; with a manifest, `Collection` lists it (labels and original sizes from there)."""
    tree = _Tree(source)
    tree.reopen()  # listing is done; reading opens the archive again, in the process that reads
    if tree.has_manifest:
        collection = Collection(source)
        readers.append(tree)  # reads members streamed and bounded, under the same wrapper folder
        images = []
        for item in collection.items:
            size = (item.orig_width, item.orig_height) if item.orig_width and item.orig_height else None
            shown = f"{source}::{item.path}" if collection.is_archive else str(source / item.path)
            images.append(InputImage(sample, shown, item.path, item.label, len(readers) - 1, item.path, size))
        return images
    readers.append(tree)
    if not tree.names:  # named on the command line, so a sample: zero counts, not a vanished input
        return [InputImage(sample, str(source), "", "", -1, "", placeholder=True)]
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
    notes: list[str] | None = None,
) -> tuple[list[InputImage], list]:
    """Every image of every input, in a fixed order (the same on every process), and their readers.

    An input that is missing or of an unknown kind stops the run here, before any work: that is a
    typo, not a damaged image.
    """
    if sample_by not in SAMPLE_BY:
        raise ValueError(f"sample_by must be one of {', '.join(SAMPLE_BY)}, not {sample_by!r}")
    images, readers = _list_all(inputs)
    if notes is not None:
        # An IFCB bin without a target is an ordinary sample; a folder or zip without a single
        # image is more often a wrong path or an unread format, so it is said, not only counted.
        notes += [
            f"{image.source}: no image in it (formats read: {', '.join(sorted(IMAGE_SUFFIXES))}); "
            "counted as a sample of zero images"
            for image in images
            if image.placeholder and not is_ifcb_source(Path(image.source))
        ]
    if notes is not None and sample_by == "input":
        notes += _pooled_subfolders(images)
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
        if sample_by == "folder" and not image.problem and not image.placeholder and "/" in image.key:
            image = replace(image, sample=f"{image.sample}/{image.key.rsplit('/', 1)[0]}")
        if sample_by == "day" and not image.problem:
            image = replace(image, sample=f"{image.sample}/{day.isoformat() if day else UNKNOWN_TIME}")
        kept.append(image)
    return kept, readers


def _pooled_subfolders(images: list[InputImage]) -> list[str]:
    """One note per folder/zip sample whose images sit in several subfolders (no manifest says what
    they are): they are read as class folders and pooled into one sample, which is wrong if they
    are samples."""
    folders: dict[str, set[str]] = {}
    for image in images:
        if "/" in image.key and image.key.split("/")[0] == image.true_label:  # `<class>/<image>` layout
            folders.setdefault(image.sample, set()).add(image.true_label)
    return [
        f"{sample}: images of {len(names)} subfolders ({', '.join(sorted(names)[:3])}{', …' if len(names) > 3 else ''}) "
        "counted as one sample, the subfolders read as classes; if they are samples, use --sample-by folder"
        for sample, names in folders.items()
        if len(names) > 1
    ]


def _list_all(inputs: Sequence[Path]) -> tuple[list[InputImage], list]:
    images: list[InputImage] = []
    readers: list = []
    for source in map(Path, inputs):
        if not source.exists():
            raise SourceError(f"{source}: no such file or folder")
    for source, sample in zip(map(Path, inputs), _sample_ids(list(map(Path, inputs))), strict=True):
        if is_ifcb_source(source):
            images += _ifcb_images(source, readers)
        elif source.is_dir() or zipfile.is_zipfile(source):
            images += _tree_images(source, readers, sample)
        else:
            raise SourceError(f"{source}: not a folder, a zip archive or an IFCB bin")
    return images, readers


BLANK_REASON = "blank: no pixel departs from the background (an empty frame)"


@dataclass
class PredictionRun:
    predictions: Path
    counts: Path
    skipped: Path
    n_predicted: int
    n_skipped: int
    seconds: float
    table: pd.DataFrame | None = None  # counts_wide.csv: one row per sample (None off the main process)
    notes: list[str] | None = None  # what the run could not decide for you (ambiguous sample grouping)
    # Why no image could be `unknown` (a classifier without the open-set cut), said once per run.
    open_set_note: str | None = None

    @property
    def shift_alarms(self) -> list[str]:
        """The samples flagged as unlike the training images (counts_wide.csv `shift_alarm`)."""
        if self.table is None or "shift_alarm" not in self.table.columns:
            return []
        flagged = self.table["shift_alarm"].astype(str).str.lower() == "true"
        return self.table.loc[flagged, "sample"].astype(str).tolist()

    @property
    def counts_wide(self) -> Path:
        return self.counts.with_name("counts_wide.csv")

    def frame(self) -> pd.DataFrame:
        """predictions.csv as a DataFrame (one row per image)."""
        return pd.read_csv(self.predictions, keep_default_na=False)


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
    object_ids: Sequence[str] | None = None,
    keep_posteriors: bool = False,
) -> None:
    """Classify images process_index, process_index + n, … into this process's CSV parts.

    Memory is bounded by one batch: rows are written as each batch finishes, and counts are kept
    per (sample, class) only. `object_ids` (one per image, `ecotaxa.object_ids`): also write each
    image as `ecotaxa/<id>.png` and its line of the EcoTaxa tsv. `keep_posteriors`: also append
    each image's position and posteriors to this process's binary parts, for `--counts`; images
    decided `unknown` are left out there (they belong to none of the classes being counted).
    """
    params, class_names = classifier.params, classifier.classes
    mine = [(i, images[i]) for i in range(process_index, len(images), num_processes)]
    counts: Counter[tuple[str, str]] = Counter()
    started = time.perf_counter()
    bundle = out_csv.with_name(ecotaxa.FOLDER)
    if object_ids is not None:
        bundle.mkdir(exist_ok=True)
    tsv_part = _part(bundle / "objects.tsv", process_index)
    with ExitStack() as files:
        predictions = csv.writer(files.enter_context(open(_part(out_csv, process_index), "w", newline="")))
        skipped = csv.writer(
            files.enter_context(open(_part(out_csv.with_name("skipped.csv"), process_index), "w", newline=""))
        )
        objects = None
        if object_ids is not None:
            tsv_file = files.enter_context(open(tsv_part, "w", newline="", encoding="ascii"))
            objects = csv.writer(tsv_file, delimiter="\t", quoting=csv.QUOTE_NONE)
        if keep_posteriors:
            kept_proba = files.enter_context(open(_part(out_csv.with_name(POSTERIORS), process_index), "wb"))
            kept_at = files.enter_context(open(_part(out_csv.with_name(POSITIONS), process_index), "wb"))
        advance = files.enter_context(progress_bar("predict", total=len(mine), enabled=show_progress))
        done, reading = 0, -1
        for batch in _batches(mine, batch_size):
            pixels, sizes, kept = [], [], []
            for position, image in batch:
                if image.placeholder:
                    counts[image.sample, UNCLASSIFIED] += 0  # the sample exists, with nothing in it
                    continue
                if image.problem:
                    skipped.writerow([position, image.sample, image.source, image.problem])
                    continue
                if image.reader != reading:  # inputs come one after another: release the last one
                    if reading >= 0:
                        readers[reading].reopen()
                    reading = image.reader
                try:
                    decoded = readers[image.reader].read_image(image.member)
                    # The original size as `data prepare` takes it: the manifest's, else the file's own.
                    orig = image.orig_size or decoded.size
                    prepared = preprocess(decoded, params, orig_size=orig)
                    if params.background == "normalise" and not prepared.pixels.any():
                        # Every probe maps an empty canvas to some class with confidence: a blank
                        # frame (a trigger on nothing) must not be counted as an organism.
                        raise ImageRejected(BLANK_REASON)
                    pixels.append(prepared.pixels)
                    # Rounded as the prepared metadata table stores the area the probe was trained on.
                    sizes.append((*orig, round(prepared.object_area, 1)))
                    if object_ids is not None:
                        ecotaxa.write_image(decoded, bundle, object_ids[position])
                except READ_ERRORS as error:
                    reason = str(error) if isinstance(error, ImageRejected) else f"could not read: {error}"
                    skipped.writerow([position, image.sample, image.source, reason])
                    continue
                kept.append((position, image))
            if kept:
                width, height, area = np.array(sizes, dtype=float).T
                proba, ood = classifier.assess(
                    np.stack(pixels),
                    np.array([image_seed(i.key) for _, i in kept]),
                    log_size_features(width, height, area) if classifier.object_size else None,
                )
                decisions = classifier.decisions(proba, ood)
                if keep_posteriors:
                    counted = np.array([d != UNKNOWN for d in decisions], dtype=bool)
                    kept_proba.write(np.ascontiguousarray(proba[counted], dtype=np.float32).tobytes())
                    kept_at.write(np.array([p for p, _ in kept], dtype=np.int64)[counted].tobytes())
                scores = [NO_OOD_SCORE] * len(kept) if ood is None else [f"{v:.6g}" for v in ood]
                for (position, image), row, score, decision in zip(
                    kept, proba, scores, decisions, strict=True
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
                            score,
                            decision,
                            image.true_label,
                        ]
                    )
                    counts[image.sample, decision] += 1
                    if objects is not None:
                        line = ecotaxa.row(
                            object_id=object_ids[position],
                            sample=image.sample,
                            key=image.key,
                            source=image.source,
                            names=names,
                            probabilities=probabilities,
                            decision=decision,
                            abstained=decision in NOT_DECIDED,
                            ood_score=score,
                        )
                        objects.writerow([position, *line])
            done += len(batch)
            advance(len(batch), img_per_s=done / max(time.perf_counter() - started, 1e-9))
    if reading >= 0:
        readers[reading].reopen()
    with open(_part(out_csv.with_name("counts.csv"), process_index), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([sample, name, count] for (sample, name), count in counts.items())


def _staged(path: Path) -> Path:
    """Where a final file is written before it is moved into place."""
    return path.with_name(f".{path.name}.staged")


def _merge(
    path: Path,
    columns: list[str],
    num_processes: int,
    *,
    parts_of: Path | None = None,
    header: Sequence[list[str]] = (),
    tsv: bool = False,
) -> int:
    """Interleave the parts back into input order (each is sorted by position); returns the row count.

    parts_of: where the parts were written (default `path`); header: lines after the column names
    (EcoTaxa's types line); tsv: tab-separated ASCII, never quoted (EcoTaxa's import format)."""
    parts = [_part(parts_of or path, i) for i in range(num_processes)]
    dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tsv else {}
    encoding = "ascii" if tsv else None
    handles = [open(p, newline="", encoding=encoding) for p in parts]  # noqa: SIM115 - closed below
    try:
        readers = [((int(row[0]), row[1:]) for row in csv.reader(h, **dialect)) for h in handles]
        rows = 0
        with open(_staged(path), "w", newline="", encoding=encoding) as out:
            writer = csv.writer(out, **dialect)
            writer.writerow(columns)
            writer.writerows(header)
            for _, row in heapq.merge(*readers, key=lambda entry: entry[0]):
                writer.writerow(row)
                rows += 1
    finally:
        for handle in handles:
            handle.close()
    for part in parts:
        part.unlink()
    return rows


def wide_table(
    counts: pd.DataFrame,
    volumes: dict[str, float | None],
    classes: Sequence[str],
    *,
    n_images: dict[str, int] | None = None,
) -> pd.DataFrame:
    """Samples × classes: volume_ml, n_images, one count column per class (and `<class>_low`,
    `<class>_high` when `counts` has interval columns), and the same `_per_ml` where any sample's
    volume is known (empty for the samples whose volume is not). n_images: per sample (default the
    sum of its counts)."""
    bounds = [name for name in ("low", "high") if name in counts.columns]

    def pivot(values: str) -> pd.DataFrame:
        table = counts.pivot_table(
            index="sample", columns="class", values=values, aggfunc="sum", fill_value=0
        )
        table = table.reindex(columns=list(classes), fill_value=0)
        table.columns.name = None
        return table if bounds else table.astype(int)

    table = pivot("count")
    blocks = [table, *(pivot(b).add_suffix(f"_{b}") for b in bounds)]
    volume = pd.Series({s: volumes.get(s) for s in table.index}, dtype=float)
    n = table.sum(axis=1) if n_images is None else pd.Series({s: n_images.get(s, 0) for s in table.index})
    wide = pd.concat([volume.rename("volume_ml"), n.rename("n_images"), *blocks], axis=1)
    if volume.notna().any():
        wide = pd.concat([wide, *(b.div(volume, axis=0).add_suffix("_per_ml") for b in blocks)], axis=1)
    return wide.rename_axis("sample").reset_index()


# The columns `with_shift_alarm` inserts after n_images, in this order.
SHIFT_ALARM_COLUMNS = ("unknown_share", "shift_p", "shift_alarm")


def with_shift_alarm(wide: pd.DataFrame, open_set: OpenSet | None) -> pd.DataFrame:
    """counts_wide.csv with, after n_images, each sample's `unknown_share`, `shift_p` (its excess of
    `unknown` images over validation's, `OpenSet.excess_unknown_p`) and `shift_alarm` (p below
    `SHIFT_ALARM_P`). Unchanged for a classifier without an open-set cut."""
    if open_set is None:
        return wide
    unknown, n_images = wide[UNKNOWN].astype(int), wide["n_images"].astype(int)
    p = [open_set.excess_unknown_p(u, n) for u, n in zip(unknown, n_images, strict=True)]
    at = wide.columns.get_loc("n_images") + 1
    columns = (
        (unknown / n_images.where(n_images > 0)).round(4),
        p,
        [bool(value < SHIFT_ALARM_P) for value in p],  # NaN (an empty sample) is no alarm
    )
    wide = wide.copy()
    for offset, (name, values) in enumerate(zip(SHIFT_ALARM_COLUMNS, columns, strict=True)):
        wide.insert(at + offset, name, values)
    return wide


def _posteriors(out_csv: Path, num_processes: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Every process's kept (positions, posteriors), read back and removed."""
    positions, proba = [], []
    for index in range(num_processes):
        at, values = _part(out_csv.with_name(POSITIONS), index), _part(out_csv.with_name(POSTERIORS), index)
        positions.append(np.fromfile(at, dtype=np.int64))
        proba.append(np.fromfile(values, dtype=np.float32).reshape(-1, n_classes))
        at.unlink()
        values.unlink()
    return np.concatenate(positions), np.concatenate(proba)


def quantified_counts(
    quantifier,
    method: Counting,
    proba: np.ndarray,
    samples: Sequence[str],
    classes: Sequence[str],
    *,
    all_samples: Sequence[str] = (),
    volumes: dict[str, float | None] | None = None,
    n_boot: int = N_BOOT,
) -> pd.DataFrame:
    """Long table (sample, class, count, low, high[, *_per_ml]) by `method`: every class of every sample
    (those of `all_samples` without an image count zero), each sample's images resampled for the 95 %
    interval. Counts are prevalences × images, so they are fractional for every method but cc."""
    samples = np.asarray(samples)
    rows = []
    for sample in sorted({*samples.tolist(), *all_samples}):
        count, low, high = sample_counts(quantifier, method, proba[samples == sample], n_boot=n_boot)
        rows += [(sample, name, *values) for name, *values in zip(classes, count, low, high, strict=True)]
    table = pd.DataFrame(rows, columns=[*COUNT_COLUMNS, "low", "high"])
    volume = table["sample"].map(volumes or {}).astype(float)
    if volume.notna().any():
        for column in ("count", "low", "high"):
            table[f"{column}_per_ml"] = table[column] / volume
    return table


def merge_parts(
    out_csv: Path,
    *,
    num_processes: int,
    classes: Sequence[str] | None = None,
    volumes: dict[str, float | None] | None = None,
    output_format: OutputFormat = "csv",
    counting: Counting | None = None,
    quantifier=None,
    samples: Sequence[str] = (),
    posteriors: tuple[np.ndarray, np.ndarray] | None = None,
    open_set: OpenSet | None = None,
) -> tuple[int, int]:
    """Write predictions.csv, skipped.csv, counts.csv and counts_wide.csv from every process's parts;
    remove the parts. With `classes` (the classifier's, `unclassified` and `unknown` added), every sample gets a
    row for every class, zeros kept; `volumes` (sample -> mL) adds concentrations to the wide table;
    `output_format="ecotaxa"` adds `ecotaxa/ecotaxa_<out folder>.tsv` (the PNGs are there already).
    `counting` (with its fitted `quantifier` and `samples`, the sample of each image position): the
    counts are that method's, with intervals, from the kept `posteriors` (image positions, posteriors
    of the images not decided `unknown`; read from the parts when not given), and the `unknown`
    images are a row (and column) of their own; the decisions stay in predictions.csv. Each file
    is written under a temporary name and moved into place at the end. `open_set` (the classifier's
    cut): counts_wide.csv gets each sample's shift alarm (`with_shift_alarm`)."""
    n_predicted = _merge(out_csv, PREDICTION_COLUMNS, num_processes)
    final = [
        out_csv.with_name("skipped.csv"),
        out_csv.with_name("counts.csv"),
        out_csv.with_name("counts_wide.csv"),
    ]
    if output_format == "ecotaxa":
        bundle = out_csv.with_name(ecotaxa.FOLDER)
        tsv = bundle / ecotaxa.tsv_name(out_csv.parent)
        _merge(
            tsv,
            ecotaxa.COLUMNS,
            num_processes,
            parts_of=bundle / "objects.tsv",
            header=[ecotaxa.TYPES],
            tsv=True,
        )
        final.append(tsv)
    n_skipped = _merge(out_csv.with_name("skipped.csv"), SKIPPED_COLUMNS, num_processes)
    counts_path = out_csv.with_name("counts.csv")
    counts: Counter[tuple[str, str]] = Counter()
    for index in range(num_processes):
        part = _part(counts_path, index)
        with open(part, newline="") as handle:
            for sample, name, count in csv.reader(handle):
                counts[sample, name] += int(count)
        part.unlink()
    all_classes = list(dict.fromkeys([*(classes or []), *NOT_DECIDED, *(name for _, name in counts)]))
    if classes is not None:
        for sample in {sample for sample, _ in counts}:
            for name in all_classes:
                counts[sample, name] += 0
    wide_path = out_csv.with_name("counts_wide.csv")
    if counting is not None:
        if classes is None:
            raise RuntimeError("counting needs the classifier's classes")
        positions, proba = posteriors or _posteriors(out_csv, num_processes, len(classes))
        per_image = np.asarray(samples)[positions]
        every_sample = sorted({sample for sample, _ in counts})
        long = quantified_counts(
            quantifier, counting, proba, per_image, classes, all_samples=every_sample, volumes=volumes
        )
        # Unknown images are counted, not quantified: a count without an interval of its own.
        unknown = pd.DataFrame(
            [(s, UNKNOWN, *[counts[s, UNKNOWN]] * 3) for s in every_sample], columns=long.columns[:5]
        )
        volume = unknown["sample"].map(volumes or {}).astype(float)
        if volume.notna().any():
            for column in ("count", "low", "high"):
                unknown[f"{column}_per_ml"] = unknown[column] / volume
        long = pd.concat(
            [long, unknown.astype({c: float for c in ("count", "low", "high")})], ignore_index=True
        )
        long.sort_values(["sample", "count", "class"], ascending=[True, False, True]).to_csv(
            _staged(counts_path), index=False
        )
        n_images = Counter(per_image.tolist())
        for sample in every_sample:
            n_images[sample] += counts[sample, UNKNOWN]
        wide = wide_table(long, volumes or {}, [*classes, UNKNOWN], n_images=dict(n_images))
        wide.insert(1, "method", counting)
    else:
        with open(_staged(counts_path), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(COUNT_COLUMNS)
            ordered = sorted(counts.items(), key=lambda entry: (entry[0][0], -entry[1], entry[0][1]))
            writer.writerows([sample, name, count] for (sample, name), count in ordered)
        long = pd.DataFrame([(s, c, n) for (s, c), n in counts.items()], columns=COUNT_COLUMNS)
        wide = wide_table(long, volumes or {}, all_classes)
    with_shift_alarm(wide, open_set).to_csv(_staged(wide_path), index=False)
    for path in [*final, out_csv]:  # predictions.csv last: its presence means the run finished
        os.replace(_staged(path), path)
    return n_predicted, n_skipped


def _score_counting(
    classifier: DeployedClassifier,
    images: Sequence[InputImage],
    positions: np.ndarray,
    proba: np.ndarray,
    path: Path,
    notes: list[str],
) -> None:
    """`quantification.csv`: every counting method against the true labels of the images of the
    classifier's classes (images of other classes have no place in its compositions)."""
    if not classifier.has_validation_posteriors:
        notes.append(f"{path.name} not written: the classifier was exported without validation posteriors")
        return
    index = {name: i for i, name in enumerate(classifier.classes)}
    truth = np.array([index.get(images[p].true_label, -1) for p in positions], dtype=np.int64)
    known = truth >= 0
    if not known.any():
        notes.append(f"{path.name} not written: no image carries a label of the classifier's classes")
        return
    samples = np.array([images[p].sample for p in positions])[known]
    val_proba, val_labels = classifier.validation_posteriors(needed_for="the counting scores")
    table = quantification_table(val_proba, val_labels, proba[known], truth[known], samples)
    # The reference a counting method has to beat: the validation mix, whatever the images.
    reference = mix_reference(val_labels, truth[known], samples, n_classes=len(classifier.classes))
    pd.concat([table, reference], ignore_index=True).to_csv(path, index=False)


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
    output_format: OutputFormat = "csv",
    counts: Counting | None = None,
    score_counting: bool = False,
) -> PredictionRun:
    """Classify every image of `inputs` into `out_csv` (predictions.csv), counts.csv, counts_wide.csv
    and skipped.csv; the returned run's `table` is counts_wide.csv as a DataFrame, `frame()` reads
    predictions.csv. `output_format="ecotaxa"` also writes the EcoTaxa import bundle `ecotaxa/`
    beside them (see `plankdiff.deploy.ecotaxa`).

    counts: None counts the decisions (`unclassified` and `unknown` classes of their own); a
    counting method (`plankdiff.deploy.quantify`) estimates every sample's class counts from the
    posteriors of its images not decided `unknown` instead (those are counted apart), fitted on the classifier's exported validation posteriors, with 95 %
    bootstrap intervals (columns count, low, high, and per mL where the volume is known).

    score_counting: where the inputs carry true labels, also score every counting method against them
    (`quantification.csv`: Bray–Curtis and mean absolute prevalence error per sample, pooled, and the
    median over samples; `plankdiff.deploy.quantify.quantification_table`; and the `validation mix`
    reference rows, which ignore the images), on the images of the
    classifier's classes that were not decided `unknown` (what the counting methods count).

    device: None takes this process's device from accelerate (its GPU under `accelerate launch`,
    else CUDA when present, else CPU). On one process this is a plain run.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, not {output_format!r}")
    if counts is not None and counts not in COUNTINGS:
        raise ValueError(f"counts must be one of {', '.join(COUNTINGS)}, not {counts!r}")
    # Fitted before any image is read: a classifier exported without validation posteriors stops here.
    quantifier = classifier.quantifier(counts) if counts is not None else None
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    # Without cpu=True accelerate ignores a multi-process CPU launch and every process thinks it is alone.
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if state.num_processes != launched:  # the launcher's environment, not the user's input
        raise RuntimeError(
            f"{launched} processes were launched but accelerate sees {state.num_processes}; they would overwrite "
            "each other's files"
        )
    classifier.to(device if device is not None else state.device)
    started = time.perf_counter()
    notes: list[str] = []
    images, readers = list_inputs(
        inputs, sample_by=sample_by, captured_from=captured_from, captured_to=captured_to, notes=notes
    )
    if state.is_main_process:  # an older run's files must not pass for this one's if it is killed
        for name in {out_csv.name, *OUTPUT_FILES}:
            out_csv.with_name(name).unlink(missing_ok=True)
        shutil.rmtree(out_csv.with_name(ecotaxa.FOLDER), ignore_errors=True)
    state.wait_for_everyone()
    ids = None
    if output_format == "ecotaxa":
        ids = ecotaxa.object_ids([i.sample for i in images], [i.key for i in images])
    predict_share(
        classifier,
        images,
        readers,
        out_csv,
        process_index=state.process_index,
        num_processes=state.num_processes,
        batch_size=batch_size,
        show_progress=show_progress and state.is_main_process,
        object_ids=ids,
        keep_posteriors=counts is not None or score_counting,
    )
    state.wait_for_everyone()
    volumes = {image.sample: image.volume_ml for image in images if not image.problem}
    posteriors = None
    if state.is_main_process and (counts is not None or score_counting):
        posteriors = _posteriors(out_csv, state.num_processes, len(classifier.classes))
    if state.is_main_process and score_counting:
        _score_counting(classifier, images, *posteriors, out_csv.with_name(QUANTIFICATION_FILE), notes)
    totals = [
        merge_parts(
            out_csv,
            num_processes=state.num_processes,
            classes=classifier.classes,
            volumes=volumes,
            output_format=output_format,
            counting=counts,
            quantifier=quantifier,
            samples=[image.sample for image in images],
            posteriors=posteriors,
            open_set=classifier.open_set,
        )
        if state.is_main_process
        else None
    ]
    n_predicted, n_skipped = broadcast_object_list(totals)[0]
    wide = out_csv.with_name("counts_wide.csv")
    table = pd.read_csv(wide, keep_default_na=False) if state.is_main_process else None
    return PredictionRun(
        predictions=out_csv,
        counts=out_csv.with_name("counts.csv"),
        skipped=out_csv.with_name("skipped.csv"),
        n_predicted=n_predicted,
        n_skipped=n_skipped,
        seconds=time.perf_counter() - started,
        table=table,
        notes=notes,
        open_set_note=classifier.open_set_note,
    )
