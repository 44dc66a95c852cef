"""Prepare a collection once: decode every image in parallel workers into one memory-mappable
uint8 array `[N, C, S, S]`, with a metadata table and the parameters that made it.

Layout of a prepared dataset folder:
    images.npy     uint8 [N, C, S, S]
    meta.csv       one row per image (label, class_index, source path, sizes, capture time, …)
    skipped.csv    every file that could not be used, with the reason
    prepare.json   preprocessing parameters, package version, source hash, class list
    splits/*.csv   split assignments (see `plankdiff.data.splits`)

Work is written chunk by chunk into `.partial-<key>/`, so an interrupted run resumes where it
stopped; the finished files appear only when everything is done.
"""

from __future__ import annotations

import ctypes
import io
import os
import shutil
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
from PIL import Image

from plankdiff import __version__
from plankdiff.data.ifcb import open_collection
from plankdiff.data.preprocess import (
    MAX_PIXELS,
    NOISE_CEILING,
    Background,
    ImageRejected,
    Markers,
    PreprocessParams,
    check_noise_ceiling,
    default_background,
    default_markers,
    keep_scale_factor,
    params_record,
    preprocess,
)
from plankdiff.data.sources import Collection, SourceError
from plankdiff.data.timestamps import capture_time
from plankdiff.progress import progress_bar
from plankdiff.provenance import cache_root, read_json, save_npy, sha256_file, sha256_json, write_json

CHUNK = 256
FORMAT_VERSION = 1

_worker_collection: Collection | None = None
_worker_params: PreprocessParams | None = None


# What one worker may hold at once: the largest file read (`MAX_FILE_BYTES`), the largest image
# decoded (`MAX_PIXELS`) and its float copies in preprocessing, measured at ~0.6 GB; the worker count
# is capped so that workers × this fits in the memory available when `prepare` starts.
WORKER_BYTES = 1 << 30


def _init_worker(collection: Collection, params: PreprocessParams, parent: int) -> None:
    global _worker_collection, _worker_params
    _die_with(parent)
    # A forked worker inherits the parent's open archive, whose file offset is shared: reopen.
    collection.reopen()
    _worker_collection, _worker_params = collection, params
    # PIL's decompression-bomb guard stays on (at twice this it refuses to open the file); `decode`
    # rejects anything above MAX_PIXELS from the header with a clearer message before that.
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def _die_with(parent: int) -> None:
    """Have the kernel kill this worker when its parent dies (SIGKILL included), so a killed
    `prepare` never leaves decoding processes behind. Linux only; elsewhere the pool's own
    shutdown is all there is."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


PR_SET_PDEATHSIG = 1


def default_workers() -> int:
    """One per core, at most 8, and no more than the available memory holds at `WORKER_BYTES` each."""
    available = psutil.virtual_memory().available  # psutil comes with accelerate
    return max(1, min(os.cpu_count() or 1, 8, available // WORKER_BYTES))


def _process_chunk(chunk_id: int, indices: list[int]) -> tuple[int, list[dict], np.ndarray]:
    collection, params = _worker_collection, _worker_params
    if collection is None or params is None:
        raise RuntimeError("prepare worker used before initialisation")
    rows, pixels = [], np.zeros((len(indices), params.channels, params.size, params.size), np.uint8)
    for slot, index in enumerate(indices):
        item = collection.items[index]
        row = {"index": index, "path": item.path, "label": item.label, "reason": ""}
        try:
            image = collection.read_image(item.path)
            orig = (item.orig_width or image.size[0], item.orig_height or image.size[1])
            prepared = preprocess(image, params, orig_size=orig)
        except ImageRejected as rejection:
            row["reason"] = str(rejection)
        except (OSError, KeyError, ValueError) as error:  # unreadable member, damaged archive entry
            row["reason"] = f"could not read: {error}"
        else:
            pixels[slot] = prepared.pixels
            row.update(
                orig_width=orig[0],
                orig_height=orig[1],
                width=prepared.width,
                height=prepared.height,
                object_area=round(prepared.object_area, 1),
                inverted=int(prepared.inverted),
                clipped=int(prepared.clipped),
            )
        rows.append(row)
    return chunk_id, rows, pixels


def source_hash(collection: Collection) -> str:
    if hasattr(collection, "fingerprint"):  # IFCB items are ROIs inside bin files, not files
        return collection.fingerprint()
    if collection.is_archive:
        return sha256_file(collection.source)
    listing = []
    for item in collection.items:
        stat = (collection.source / item.path).stat()
        listing.append((item.path, item.label, stat.st_size, stat.st_mtime_ns))
    return sha256_json(listing)


def source_fingerprint(source: Path | str, labels_csv: Path | str | None = None) -> str:
    """The hash `prepare` records for `source` (file list, sizes and times, or the archive's bytes):
    a cache of a preparation must include it, or a changed collection reuses stale images."""
    return source_hash(open_collection(source, labels_csv))


def prepared_dir(name: str) -> Path:
    return cache_root() / "prepared" / name


def _longest_sides(collection: Collection) -> np.ndarray:
    sides = []
    for item in collection.items:
        if item.orig_width and item.orig_height:
            sides.append(max(item.orig_width, item.orig_height))
            continue
        try:
            with Image.open(io.BytesIO(collection.read_bytes(item.path))) as image:
                sides.append(max(image.size))
        except Exception:  # noqa: BLE001 - a file that cannot even be opened is reported later
            continue
    return np.asarray(sides)


def prepare_like(
    source: Path | str, parent: PreparedDataset, *, name: str, show_progress: bool = True
) -> PreparedDataset:
    """`source` preprocessed exactly as `parent` was (size, mode, channels, polarity, background and
    keep-scale's factor, read from its record): a derived copy of some of its images, such as a
    processing shift, must differ from them only by what was done to the files."""
    params = parent.params
    return prepare(
        source,
        name=name,
        size=params.size,
        mode=params.mode,
        channels=params.channels,
        normalise_polarity=params.normalise_polarity,
        background=params.background,
        markers=params.markers,
        noise_ceiling=params.noise_ceiling,
        scale_factor=params.scale_factor,
        show_progress=show_progress,
    )


def prepare(
    source: Path | str,
    *,
    name: str,
    size: int = 32,
    mode: str = "fit",
    channels: int = 1,
    normalise_polarity: bool = True,
    keep_scale_quantile: float = 0.95,
    workers: int | None = None,
    out_dir: Path | None = None,
    show_progress: bool = True,
    labels_csv: Path | str | None = None,
    background: Background | None = None,
    markers: Markers | None = None,
    noise_ceiling: float | None = NOISE_CEILING,
    scale_factor: float | None = None,
) -> PreparedDataset:
    """Decode and preprocess `source` once; reuse the result when nothing it depends on changed.

    `background` None: normalised where polarity is normalised (`default_background`).
    `markers`: "remove" turns corner markers into background (`preprocess.corner_markers`); None:
    removed where the background is normalised (`default_markers`).
    `noise_ceiling`: the most noise the border may claim (`preprocess.NOISE_CEILING`); None: no
    ceiling, as preparations made before it existed. Dropped where the background is not normalised
    (it has no effect there, and the record and key stay as they were).
    `scale_factor`: keep-scale's factor given, not read from this collection's sizes (see
    `prepare_like`)."""
    check_noise_ceiling(noise_ceiling)  # before anything is read, and before it may be dropped below
    collection = open_collection(source, labels_csv)
    factor = 1.0
    if mode == "keep-scale":
        factor = scale_factor or keep_scale_factor(_longest_sides(collection), size, keep_scale_quantile)
    background = background or default_background(normalise_polarity)
    markers = markers or default_markers(background)
    params = PreprocessParams(
        size=size,
        mode=mode,
        channels=channels,
        normalise_polarity=normalise_polarity,
        scale_factor=factor,
        background=background,
        markers=markers,
        noise_ceiling=noise_ceiling if background == "normalise" else None,
    )
    config = {
        "format_version": FORMAT_VERSION,
        "plankdiff_version": __version__,
        "source": str(Path(source).resolve()),
        "source_hash": source_hash(collection),
        "n_listed": len(collection),
        "preprocess": params_record(params),
        "keep_scale_quantile": keep_scale_quantile if mode == "keep-scale" else None,
    }
    key = sha256_json({k: v for k, v in config.items() if k != "source"})
    root = Path(out_dir) if out_dir else prepared_dir(name)
    info_path = root / "prepare.json"
    partial = root / f".partial-{key[:12]}"
    if info_path.exists() and read_json(info_path).get("key") == key:
        # A kill between writing prepare.json and removing the work folder leaves it behind.
        shutil.rmtree(partial, ignore_errors=True)
        return PreparedDataset(root)

    (partial / "chunks").mkdir(parents=True, exist_ok=True)
    shape = (len(collection), params.channels, params.size, params.size)
    pixels_path = partial / "pixels.npy"
    pixels = _open_partial(pixels_path, shape)
    chunks = [list(range(i, min(i + CHUNK, len(collection)))) for i in range(0, len(collection), CHUNK)]
    pending = [c for c in range(len(chunks)) if not (partial / "chunks" / f"{c}.csv").exists()]

    workers = workers or default_workers()
    with progress_bar(f"prepare {name}", total=len(collection), enabled=show_progress) as advance:
        advance(len(collection) - sum(len(chunks[c]) for c in pending))
        with ProcessPoolExecutor(
            workers, initializer=_init_worker, initargs=(collection, params, os.getpid())
        ) as pool:
            futures = [pool.submit(_process_chunk, c, chunks[c]) for c in pending]
            for future in as_completed(futures):
                chunk_id, rows, chunk_pixels = future.result()
                pixels[chunks[chunk_id][0] : chunks[chunk_id][-1] + 1] = chunk_pixels
                pixels.flush()
                table = pd.DataFrame(rows)
                chunk_csv = partial / "chunks" / f"{chunk_id}.csv"
                table.to_csv(chunk_csv.with_suffix(".tmp"), index=False)
                os.replace(chunk_csv.with_suffix(".tmp"), chunk_csv)
                advance(len(rows))

    table = pd.concat([pd.read_csv(p, keep_default_na=False) for p in (partial / "chunks").glob("*.csv")])
    table = table.sort_values("index").reset_index(drop=True)
    skipped = table[table["reason"] != ""][["path", "label", "reason"]]
    skipped.insert(0, "file", [f"{collection.source}::{p}" for p in skipped["path"]])
    usable = table[table["reason"] == ""].drop(columns=["reason"]).copy()
    if usable.empty:
        raise SourceError(
            f"{collection.source}: none of {len(collection)} images could be used; see the reasons above"
            if skipped.empty
            else f"{collection.source}: none of {len(collection)} images could be used "
            f"(first problem: {skipped.iloc[0]['path']}: {skipped.iloc[0]['reason']})"
        )
    classes = sorted(usable["label"].unique())
    usable["class_index"] = usable["label"].map({c: i for i, c in enumerate(classes)})
    times = [capture_time(p) for p in usable["path"]]
    usable["capture_time"] = [t.isoformat() if t else "" for t in times]
    source_rows = usable["index"].to_numpy()
    usable = usable.drop(columns=["index"]).reset_index(drop=True)

    root.mkdir(parents=True, exist_ok=True)
    save_npy(root / "images.npy", np.ascontiguousarray(pixels[source_rows]))
    usable.to_csv(root / "meta.csv", index=False)
    skipped.to_csv(root / "skipped.csv", index=False)
    empty = [c.label for c in collection.empty_classes]
    write_json(
        info_path,
        {
            **config,
            "key": key,
            "name": name,
            "n_images": len(usable),
            "n_skipped": len(skipped),
            "classes": classes,
            "empty_class_folders": empty,
        },
    )
    del pixels
    shutil.rmtree(partial, ignore_errors=True)
    return PreparedDataset(root)


def _open_partial(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The partial pixel array to resume into; one cut short by a kill while it was being created
    (unreadable header or wrong shape) is started again, with the chunks that claimed to be in it."""
    if path.exists():
        try:
            pixels = np.lib.format.open_memmap(path, mode="r+")
            if pixels.shape == shape and pixels.dtype == np.uint8:
                return pixels
            del pixels
        except (ValueError, OSError):
            pass
        shutil.rmtree(path.parent / "chunks", ignore_errors=True)
        (path.parent / "chunks").mkdir()
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)


class PreparedDataset:
    """A prepared dataset folder: pixels memory-mapped, metadata as a DataFrame."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        info_path = self.root / "prepare.json"
        if not info_path.exists():
            raise SourceError(
                f"{self.root}: not a prepared dataset (no prepare.json); run `plankdiff data prepare`"
            )
        self.info = read_json(info_path)
        self.images = np.load(self.root / "images.npy", mmap_mode="r")
        self.meta = pd.read_csv(self.root / "meta.csv", keep_default_na=False)
        if len(self.meta) != len(self.images):
            raise SourceError(f"{self.root}: meta.csv and images.npy disagree in length; prepare it again")

    @classmethod
    def open(cls, name_or_path: str | Path) -> PreparedDataset:
        path = Path(name_or_path)
        return cls(path if (path / "prepare.json").exists() else prepared_dir(str(name_or_path)))

    @property
    def name(self) -> str:
        return self.info["name"]

    @property
    def classes(self) -> list[str]:
        return self.info["classes"]

    @property
    def labels(self) -> np.ndarray:
        return self.meta["class_index"].to_numpy()

    @property
    def key(self) -> str:
        return self.info["key"]

    @property
    def params(self) -> PreprocessParams:
        return PreprocessParams(**self.info["preprocess"])

    @property
    def skipped(self) -> pd.DataFrame:
        return pd.read_csv(self.root / "skipped.csv", keep_default_na=False)

    def __len__(self) -> int:
        return len(self.images)
