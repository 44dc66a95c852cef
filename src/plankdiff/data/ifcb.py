"""Raw Imaging FlowCytobot (IFCB) bins, read straight from the instrument's files.

A bin is three files sharing a stem: `.hdr` (text header), `.adc` (CSV, one row per trigger)
and `.roi` (the images, packed 8-bit grayscale). ROI number k is ADC row k (1-based); rows
whose width or height is 0 are triggers without an image. Image k is `width*height` bytes at
the row's byte offset, stored row by row (reshape to `[height, width]`).

Two name and ADC generations exist: `IFCB5_2012_028_081515` (instrument, year, day of year,
time; ROI geometry in 0-based ADC columns 9-13) and `D20130526T095207_IFCB013` (date, time,
instrument; columns 13-17). When the header's `ADCFileFormat` names the columns, those names
win over the generation's default. Bins are listed without reading them; a damaged bin raises
`IfcbError` (naming the file and the problem) when it is first read.

A *target* is one organism. Early instruments (IFCB1-6, old names) sometimes write one organism as
two overlapping ROIs of one trigger; like WHOI's reference reader (pyifcb's `InfilledImages`),
`targets()` merges such a pair into one image under the first ROI's number, and the second number
is no target. New-format bins have one target per ROI. `ml_analyzed` is the volume of sample the
bin looked at, the denominator of a concentration (see `IfcbBin.ml_analyzed`).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cached_property
from itertools import pairwise
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import pandas as pd
from PIL import Image

from plankdiff.data.preprocess import MAX_SIDE, MIN_SIDE, ImageRejected
from plankdiff.data.sources import Collection, SourceError, SourceItem
from plankdiff.provenance import sha256_json

SUFFIXES = (".hdr", ".adc", ".roi")
UNLABELLED = "unlabelled"
_NEW_NAME = re.compile(r"^D(\d{8})T(\d{6})_IFCB(\d+)$")
_OLD_NAME = re.compile(r"^IFCB(\d+)_(\d{4})_(\d{3})_(\d{6})$")
_ROI_NAME = re.compile(r"^(.+)_(\d+)$")
# ROI x, y, width, height, byte offset: 0-based ADC columns, and the header names that mark them.
_GEOMETRY = {"old": (9, 10, 11, 12, 13), "new": (13, 14, 15, 16, 17)}
_GEOMETRY_NAMES = ("roix", "roiy", "roiwidth", "roiheight", "startbyte")
# Old ADC rows: 0-based columns of the trigger number, trigger-open and frame-grab times (s).
_OLD_TRIGGER, _OLD_TRIGGER_OPEN, _OLD_FRAME_GRAB = 0, 7, 8
# New ADC rows end with the run time and inhibit time (s) accumulated since the bin started.
_NEW_TIMES_NAMES = ("runtime", "inhibittime")
_NEW_TIMES_DEFAULT = (22, 23)
# Old instruments: a syringe step is 5/48000 mL at 40 steps/s; a trigger costs at least 0.073 s of
# processing during which the camera does not look (the constants of WHOI's processing code).
_OLD_ML_PER_S = 5 / 48000 * 40
_OLD_MIN_PROC_S = 0.073
NEW_FLOW_ML_PER_MIN = 0.25  # the standard syringe pump of IFCB 7 and later
# Two ROIs of one trigger are one organism when their boxes overlap by more than this many pixels.
_STITCH_OVERLAP = 2


class IfcbError(SourceError):
    """An IFCB bin that cannot be read as it claims to be (a `ValueError`, like `SourceError`)."""


@dataclass(frozen=True)
class BinName:
    stem: str
    instrument: int
    timestamp: datetime  # UTC, as written into the name by the acquisition software
    generation: Literal["old", "new"]


def parse_bin_name(stem: str) -> BinName:
    """Instrument and UTC start time of a bin from its name (either naming generation)."""
    try:
        if match := _NEW_NAME.match(stem):
            moment = datetime.strptime(match[1] + match[2], "%Y%m%d%H%M%S")
            return BinName(stem, int(match[3]), moment.replace(tzinfo=timezone.utc), "new")
        if match := _OLD_NAME.match(stem):
            year, day = int(match[2]), int(match[3])
            clock = datetime.strptime(match[4], "%H%M%S")
            moment = datetime(year, 1, 1, clock.hour, clock.minute, clock.second, tzinfo=timezone.utc)
            moment += timedelta(days=day - 1)
            if day < 1 or moment.year != year:
                raise ValueError(f"day of year {day} does not exist in {year}")
            return BinName(stem, int(match[1]), moment, "old")
    except ValueError as error:
        raise IfcbError(f"{stem!r}: IFCB bin name with an impossible date or time ({error})") from None
    raise IfcbError(
        f"{stem!r}: not an IFCB bin name (expected D<YYYYMMDD>T<HHMMSS>_IFCB<n> or IFCB<n>_<YYYY>_<DDD>_<HHMMSS>)"
    )


def parse_roi_name(name: str) -> tuple[BinName, int]:
    """The bin and ROI number of an image name such as `D20220522T000439_IFCB134_00002[.png]`."""
    match = _ROI_NAME.match(Path(name).name.split(".")[0])
    if not match:
        raise IfcbError(f"{name!r}: not an IFCB ROI name (expected <bin>_<roi number>)")
    return parse_bin_name(match[1]), int(match[2])


def _parse_header(path: Path, text: str) -> dict[str, str]:
    # New headers are `key: value` lines. Old ones are quoted: `"key = value"`, or a line of
    # space-separated names followed by a line of comma-separated values. Other lines are ignored.
    header: dict[str, str] = {}
    lines = [line.strip() for line in text.splitlines()]
    quoted = [next(csv.reader([line])) if line.startswith('"') else None for line in lines]
    for i, line in enumerate(lines):
        if quoted[i] is not None:
            line = ",".join(quoted[i]).strip()
            values = quoted[i + 1] if i + 1 < len(lines) else None
            names = line.split()
            if values and len(names) > 1 and len(values) == len(names) and not re.search("[:=]", line):
                header.update(zip(names, (value.strip() for value in values), strict=True))
                continue
        if match := re.match(r"^([^:=]+?)\s*[:=]\s*(.*)$", line):
            header[match[1]] = match[2].strip()
    if not header:
        raise IfcbError(f"{path}: no 'key: value' lines; not an IFCB header")
    return header


class IfcbBin:
    """One bin, read lazily: nothing is opened until the header, ADC table or an image is asked for."""

    def __init__(self, path: Path | str):
        path = Path(path)
        if path.suffix in SUFFIXES:
            path = path.with_suffix("")
        elif path.suffix:
            raise IfcbError(f"{path}: not an IFCB file (expected one of {', '.join(SUFFIXES)})")
        self.stem_path = path
        if not any(self.file(s).exists() for s in SUFFIXES):
            raise IfcbError(f"{path}: no such bin (no {', '.join(SUFFIXES)} file with this stem)")
        self.name = parse_bin_name(path.name)
        self._handle: BinaryIO | None = None

    def file(self, suffix: str) -> Path:
        return self.stem_path.with_name(self.stem_path.name + suffix)

    def _text(self, suffix: str) -> str:
        path = self.file(suffix)
        try:
            return path.read_text(encoding="latin-1")
        except FileNotFoundError:
            raise IfcbError(f"{path}: missing (a bin needs {', '.join(SUFFIXES)})") from None

    @cached_property
    def header(self) -> dict[str, str]:
        text = self._text(".hdr")
        if not text.strip():
            raise IfcbError(f"{self.file('.hdr')}: empty header file (0 bytes of text)")
        try:
            return _parse_header(self.file(".hdr"), text)
        except csv.Error as error:
            raise IfcbError(f"{self.file('.hdr')}: unreadable header ({error})") from None

    @cached_property
    def _columns(self) -> tuple[list[str] | None, tuple[int, ...]]:
        """Column names from the header if it has them, and the geometry columns to use."""
        names = [n.strip() for n in self.header.get("ADCFileFormat", "").split(",") if n.strip()]
        keys = [re.sub(r"[^a-z0-9]", "", n.lower()) for n in names]
        if all(k in keys for k in _GEOMETRY_NAMES):
            return names, tuple(keys.index(k) for k in _GEOMETRY_NAMES)
        return names or None, _GEOMETRY[self.name.generation]

    @cached_property
    def adc(self) -> pd.DataFrame:
        """The ADC table, indexed by ROI number (1-based row), columns named by the header if it can."""
        path, (names, geometry) = self.file(".adc"), self._columns
        rows, reader = [], csv.reader(io.StringIO(self._text(".adc")))
        try:
            lines = list(reader)
        except csv.Error as error:
            raise IfcbError(f"{path}: line {reader.line_num}: not CSV ({error})") from None
        for line_no, fields in enumerate(lines, 1):
            while fields and not fields[-1].strip():
                fields.pop()  # old ADC rows end in a comma
            if not fields:
                continue
            if len(fields) <= max(geometry) or (rows and len(fields) != len(rows[0])):
                raise IfcbError(
                    f"{path}: line {line_no} has {len(fields)} fields, expected {len(rows[0]) if rows else f'> {max(geometry)}'}"
                )
            try:
                rows.append([float(f) for f in fields])
            except ValueError:
                raise IfcbError(f"{path}: line {line_no} holds a non-numeric field") from None
        width = len(rows[0]) if rows else max(geometry) + 1
        columns = names if names and len(names) == width else [f"col{i}" for i in range(width)]
        table = pd.DataFrame(np.asarray(rows, dtype=np.float64).reshape(-1, width), columns=columns)
        table.index = pd.RangeIndex(1, len(table) + 1, name="roi")
        return table

    def _key_index(self, keys: Sequence[str], default: tuple[int, ...]) -> tuple[int, ...]:
        """0-based ADC columns of `keys` by the header's column names, else the given defaults."""
        names = [re.sub(r"[^a-z0-9]", "", n.lower()) for n in (self._columns[0] or [])]
        return tuple(names.index(k) for k in keys) if all(k in names for k in keys) else default

    @cached_property
    def _positions(self) -> dict[int, tuple[int, int]]:
        """ROI number -> (x, y) of its box in the camera frame."""
        x, y = self._columns[1][:2]
        values = self.adc.to_numpy()
        return {n: (int(values[n - 1, x]), int(values[n - 1, y])) for n in self._geometry}

    @cached_property
    def _stitched(self) -> dict[int, tuple[int, tuple[int, int, int, int]]]:
        """First ROI number -> (second ROI number, stitched box x1, y1, x2, y2), old bins only.

        Consecutive image ROIs of one trigger whose boxes overlap by more than `_STITCH_OVERLAP`
        pixels each way are one organism (the reference reader's rule).
        """
        if self.name.generation != "old" or not self._geometry:
            return {}
        triggers = self.adc.iloc[:, _OLD_TRIGGER].to_numpy()
        numbers = list(self._geometry)
        pairs = {}
        for a, b in pairwise(numbers):
            if triggers[a - 1] != triggers[b - 1]:
                continue
            (ax, ay), (bx, by) = self._positions[a], self._positions[b]
            (_, aw, ah), (_, bw, bh) = self._geometry[a], self._geometry[b]
            if (
                ax < bx + bw - _STITCH_OVERLAP
                and ax + aw > bx + _STITCH_OVERLAP
                and ay < by + bh - _STITCH_OVERLAP
                and ay + ah > by + _STITCH_OVERLAP
            ):
                pairs[a] = (b, (min(ax, bx), min(ay, by), max(ax + aw, bx + bw), max(ay + ah, by + bh)))
        return pairs

    def targets(self) -> list[int]:
        """Target numbers: every ROI number except the second ROI of a stitched pair."""
        seconds = {second for second, _ in self._stitched.values()}
        return [n for n in self._geometry if n not in seconds]

    def target_size(self, number: int) -> tuple[int, int]:
        """(width, height) of target `number` (the stitched box for a stitched pair)."""
        if number in self._stitched:
            x1, y1, x2, y2 = self._stitched[number][1]
            return x2 - x1, y2 - y1
        return self.size(number)

    def read_target(self, number: int) -> np.ndarray:
        """Target `number` as uint8 `[height, width]`: the ROI, or a stitched pair with its gap infilled.

        Stitched: each ROI's pixels at its place in the box (the second over the first where they
        overlap); the pixels neither covers take one value, the rounded mean of the covered pixels
        on the boundary of the uncovered region (the reference reader's infill, pixel for pixel).
        """
        if number not in self._stitched:
            return self.read_roi(number)
        second, (x1, y1, x2, y2) = self._stitched[number]
        image = np.zeros((y2 - y1, x2 - x1), np.uint8)
        uncovered = np.ones(image.shape, bool)
        for roi in (number, second):
            (x, y), pixels = self._positions[roi], self.read_roi(roi)
            rows, cols = slice(y - y1, y - y1 + pixels.shape[0]), slice(x - x1, x - x1 + pixels.shape[1])
            image[rows, cols], uncovered[rows, cols] = pixels, False
        if uncovered.any():
            boundary = _inner_boundary(_dilate(uncovered))
            # The reference copies the second row/column onto the first (and last) ones.
            boundary[:, 0], boundary[:, -1] = boundary[:, 1], boundary[:, -2]
            boundary[0, :], boundary[-1, :] = boundary[1, :], boundary[-2, :]
            edge = image[boundary & ~uncovered]
            image[uncovered] = round(float(edge.mean())) if edge.size else 0
        return image

    @cached_property
    def ml_analyzed(self) -> float:
        """Millilitres of sample analysed in this bin (run time minus inhibit time, times the flow rate).

        New bins: from the ADC's last row (its run and inhibit time), or the header's `runTime` and
        `inhibitTime` when the ADC has no rows. Old bins: the last frame grab is the run time, and
        each trigger's processing time (at least 0.073 s) from the frame grab before it to its
        trigger open is time the camera did not look; the syringe moves 5/48000 mL per step, 40
        steps/s. Matches WHOI's reference reader to 1e-6 (tests). NaN when it cannot be known
        (an old bin without triggers).
        """
        table = self.adc.to_numpy()
        if self.name.generation == "old":
            if not len(table):
                return float("nan")
            _, first = np.unique(table[:, _OLD_TRIGGER], return_index=True)
            rows = table[np.sort(first)]
            # A bin that spans midnight has negative clock times after it; add a day to those.
            grab = rows[:, _OLD_FRAME_GRAB] + (rows[:, _OLD_FRAME_GRAB] < 0) * 86400.0
            opened = rows[:, _OLD_TRIGGER_OPEN] + (rows[:, _OLD_TRIGGER_OPEN] < 0) * 86400.0
            processing = np.maximum(opened[1:] - grab[:-1], _OLD_MIN_PROC_S)
            look = grab[-1] - processing.sum() - _OLD_MIN_PROC_S
            return float(look * _OLD_ML_PER_S)
        run_col, inhibit_col = self._key_index(_NEW_TIMES_NAMES, _NEW_TIMES_DEFAULT)
        look = None
        if len(table) and table.shape[1] > max(run_col, inhibit_col):
            look = table[-1, run_col] - table[-1, inhibit_col]
        if look is None or look <= 0:
            try:
                look = float(self.header["runTime"]) - float(self.header["inhibitTime"])
            except (KeyError, ValueError):
                raise IfcbError(
                    f"{self.file('.hdr')}: no runTime/inhibitTime, so the volume analysed is unknown"
                ) from None
        return float(look * NEW_FLOW_ML_PER_MIN / 60)

    @cached_property
    def _geometry(self) -> dict[int, tuple[int, int, int]]:
        """ROI number -> (byte offset, width, height), checked against the `.roi` file's size."""
        adc_path, geometry = self.file(".adc"), self._columns[1]
        values = self.adc.to_numpy()[:, list(geometry)]
        if not (np.isfinite(values).all() and np.array_equal(values, np.round(values))):
            raise IfcbError(f"{adc_path}: ROI geometry columns {list(geometry)} hold non-integer values")
        rois = {}
        for number, (_x, _y, width, height, offset) in zip(
            self.adc.index, values.astype(np.int64), strict=True
        ):
            if min(width, height) < 0 or (width and height and offset < 0):
                raise IfcbError(f"{adc_path}: ROI {number} has a negative size or byte offset")
            if width and height:
                rois[int(number)] = (int(offset), int(width), int(height))
        roi_path = self.file(".roi")
        if rois and not roi_path.exists():
            raise IfcbError(f"{roi_path}: missing, but {adc_path.name} lists {len(rois)} ROIs")
        size = roi_path.stat().st_size if rois else 0
        for number, (offset, width, height) in rois.items():
            if offset + width * height > size:
                raise IfcbError(
                    f"{roi_path}: truncated: ROI {number} needs bytes {offset}..{offset + width * height} "
                    f"but the file has {size}"
                )
        return rois

    def roi_numbers(self) -> list[int]:
        return list(self._geometry)

    def _roi(self, number: int) -> tuple[int, int, int]:
        if number not in self._geometry:
            raise IfcbError(f"{self.file('.adc')}: no ROI {number} (no such row, or a trigger without image)")
        return self._geometry[number]

    def size(self, number: int) -> tuple[int, int]:
        """(width, height) of ROI `number`, without reading its pixels."""
        return self._roi(number)[1:]

    def read_roi(self, number: int) -> np.ndarray:
        """ROI `number` as uint8 `[height, width]`, pixels exactly as stored."""
        offset, width, height = self._roi(number)
        if self._handle is None:
            self._handle = open(self.file(".roi"), "rb")  # noqa: SIM115 - kept open across reads
        pixels = np.empty(width * height, np.uint8)
        self._handle.seek(offset)
        if self._handle.readinto(pixels) != pixels.size:
            raise IfcbError(f"{self.file('.roi')}: ended inside ROI {number} (file changed while reading?)")
        return pixels.reshape(height, width)

    def close(self) -> None:
        """Drop the open `.roi` handle (a forked worker must not share the parent's file offset)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None}

    def __iter__(self):
        for number in self.roi_numbers():
            yield number, self.read_roi(number)

    def __len__(self) -> int:
        return len(self._geometry)

    def __repr__(self) -> str:
        return f"IfcbBin({str(self.stem_path)!r})"


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Binary dilation by the 4-neighbour cross (outside the image counts as False)."""
    padded = np.pad(mask, 1)
    return mask | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]


def _inner_boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` with a 4-neighbour outside it (outside the image counts as outside)."""
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def find_bins(folder: Path | str) -> list[IfcbBin]:
    """Every bin under `folder` (recursive), sorted by stem; files not named like a bin are ignored.

    Listing opens nothing, so a damaged bin is listed and raises `IfcbError` when read.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise IfcbError(f"{folder}: not a folder")
    stems = {p.with_suffix("") for s in SUFFIXES for p in folder.rglob(f"*{s}") if p.is_file()}
    named = []
    for stem in stems:
        try:
            parse_bin_name(stem.name)
        except IfcbError:
            continue
        named.append(stem)
    return [IfcbBin(stem) for stem in sorted(named, key=lambda p: (p.name, str(p)))]


def _read_labels(path: Path) -> dict[tuple[str, int], str]:
    """`(bin stem, ROI number) -> class` from a CSV with `file_name` (`<bin>_<roi>.png`) and `class_name`."""
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except (OSError, UnicodeDecodeError) as error:
        raise IfcbError(f"{path}: cannot read labels ({error})") from None
    if not rows or not {"file_name", "class_name"} <= set(rows[0]):
        raise IfcbError(f"{path}: labels CSV needs the columns 'file_name' and 'class_name'")
    labels: dict[tuple[str, int], str] = {}
    for line_no, row in enumerate(rows, 2):
        try:
            name, number = parse_roi_name(row["file_name"].strip())
        except IfcbError as error:
            raise IfcbError(f"{path}: line {line_no}: {error}") from None
        label, key = row["class_name"].strip(), (name.stem, number)
        if labels.get(key, label) != label:
            raise IfcbError(f"{path}: line {line_no}: {row['file_name']} labelled twice, differently")
        if label:
            labels[key] = label
    return labels


class IfcbCollection:
    """IFCB bins seen as a `Collection`: one item per target (a ROI, or a stitched pair of them),
    named as the IFCB dashboard names it, `<bin>_<roi:05d>` (`D20220522T000439_IFCB134_00002`).

    `source` is one bin (any of its files, or its stem) or a folder searched recursively. With
    `labels_csv`, ROIs take its `class_name`; the others are `unlabelled`, or dropped when
    `labelled_only`. Every bin is checked while listing, so a damaged one fails here, not in a worker.
    """

    is_archive = False

    def __init__(
        self, source: Path | str, labels_csv: Path | str | None = None, *, labelled_only: bool = False
    ):
        self.source = Path(source)
        self.bins = find_bins(self.source) if self.source.is_dir() else [IfcbBin(self.source)]
        self._by_stem = {b.name.stem: b for b in self.bins}
        if len(self._by_stem) != len(self.bins):
            stems = [b.name.stem for b in self.bins]
            twice = next(stem for stem in stems if stems.count(stem) > 1)
            raise IfcbError(f"{self.source}: bin {twice} appears in more than one folder")
        if labelled_only and labels_csv is None:
            raise IfcbError(f"{self.source}: labelled_only needs a labels_csv")
        labels = _read_labels(Path(labels_csv)) if labels_csv is not None else {}
        self.labels_csv = Path(labels_csv) if labels_csv is not None else None
        self.empty_classes: list = []
        self.items: list[SourceItem] = []
        for ifcb_bin in self.bins:
            for number in ifcb_bin.targets():
                label = labels.pop((ifcb_bin.name.stem, number), None)
                if label is None and labelled_only:
                    continue
                width, height = ifcb_bin.target_size(number)
                path = f"{ifcb_bin.name.stem}_{number:05d}"
                self.items.append(SourceItem(path, label or UNLABELLED, width, height))
        stray = [key for key in labels if key[0] in self._by_stem]
        if stray:
            raise IfcbError(
                f"{self.labels_csv}: labels ROI {stray[0][1]} of {stray[0][0]}, which has no such ROI"
            )
        if not self.items:
            raise IfcbError(
                f"{self.source}: no {'labelled ' if labelled_only else ''}ROIs in {len(self.bins)} bin(s)"
            )

    def read_image(self, path: str) -> Image.Image:
        """Target `path` (`<bin>_<roi>`) as an 'L' image, pixels as stored (stitched where split)."""
        name, number = parse_roi_name(path)
        if name.stem not in self._by_stem:
            raise IfcbError(f"{self.source}: no bin {name.stem}")
        pixels = self._by_stem[name.stem].read_target(number)
        height, width = pixels.shape
        if min(width, height) < MIN_SIDE or max(width, height) > MAX_SIDE:
            raise ImageRejected(f"ROI size {width}×{height} px outside [{MIN_SIDE}, {MAX_SIDE}]")
        return Image.fromarray(pixels)

    def reopen(self) -> None:
        for ifcb_bin in self.bins:
            ifcb_bin.close()

    def fingerprint(self) -> str:
        """Changes when any bin file or any label changes (the prepare cache key uses it)."""
        files = [
            (p.name, p.stat().st_size, p.stat().st_mtime_ns)
            for b in self.bins
            for p in map(b.file, SUFFIXES)
            if p.exists()
        ]
        return sha256_json([files, [(item.path, item.label) for item in self.items]])

    @property
    def classes(self) -> list[str]:
        return sorted({item.label for item in self.items})

    def __len__(self) -> int:
        return len(self.items)


def is_ifcb_source(source: Path | str) -> bool:
    """An IFCB file or stem, or a folder holding `.adc` files somewhere below it."""
    source = Path(source)
    if source.is_dir():
        return next(source.rglob("*.adc"), None) is not None
    if source.suffix in SUFFIXES:
        return True
    return not source.suffix and any(source.with_name(source.name + s).exists() for s in SUFFIXES)


def open_collection(source: Path | str, labels_csv: Path | str | None = None) -> Collection | IfcbCollection:
    """The right reader for `source`: raw IFCB bins, or an image folder / zip."""
    if is_ifcb_source(source):
        return IfcbCollection(source, labels_csv)
    if labels_csv is not None:
        raise SourceError(f"{source}: labels_csv applies to IFCB bins only")
    return Collection(source)
