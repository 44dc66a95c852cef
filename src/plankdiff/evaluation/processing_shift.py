"""A processing-shift benchmark: the same test organisms as another instrument's processing chain
would publish them, built from the raw files (not from prepared arrays, which have already been
through polarity and background normalisation).

Each shift is a named, seeded, typed transform of one decoded PIL image:

| name | what it does |
|---|---|
| `grey-background` | background raised (or lowered) to mid-grey by a linear map that keeps the far extreme, plus Gaussian sensor noise |
| `inverted` | polarity inverted (dark-field ↔ shadowgraph) |
| `jpeg` | re-encoded as JPEG at a quality drawn from 50–75 |
| `rescaled` | downscaled (default to half) then upscaled back to its size: a resized thumbnail |
| `corner-disc` | a small disc in one corner (drawn), in the object's ink: bright after polarity normalisation, like a scale marker |
| `half-contrast` | the contrast around the background level halved |
| `combined` | grey background, corner disc, rescaled and JPEG at once, in that order: another instrument's chain as a user meets it (issue #19's hidden images had all four) |

`build_shift_zips` writes one zip per shift in the layout of the shared zips
(`<name>-<shift>/<class>/<file>.png` and `manifest.csv` with the original sizes), so `prepare` reads
it as it reads the clean one; images are stored as PNG, so a shift adds nothing of its own but the
transform (the `jpeg` shift's loss is in the pixels it returns). Each image's random draws come from
(seed, its path), so a shift is the same whatever order or subset it is built in; the zip itself is
the same bytes for the same input (members in the order of `paths`, each dated `ZIP_DATE`, not the
clock), so a rebuilt shift set is byte-identical and a cache of it can be checked by hash.

Scoring: `shifted_sets` turns the feature stores of the prepared shift zips into `probe.run.Shifted`
test sets labelled with the clean split's classes; `probe_features(clean_store, clean_split,
shifted=...)` applies the probe selected on clean validation to each; `processing_shift_table` gives
accuracy and macro-F1 per shift and the drop from the clean test.
"""

from __future__ import annotations

import csv
import io
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar, get_args

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from plankdiff.choices import ShiftName
from plankdiff.data.prepare import PreparedDataset, prepare_like
from plankdiff.data.preprocess import border_values, decode
from plankdiff.data.sources import MANIFEST_NAME, Collection
from plankdiff.data.splits import Split
from plankdiff.features.store import FeatureStore
from plankdiff.probe.run import ProbeResult, Shifted, probe_features

SHIFT_NAMES: tuple[str, ...] = get_args(ShiftName)
SPLIT_NAME = "processing-shift"
# The goal: no single shift may cost more than this many points of accuracy.
GOAL_MAX_DROP = 0.10
# Every member of a shift zip is dated the zip format's earliest date rather than when it was written,
# so two builds of the same input give the same bytes (the entry time is in every local header).
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def _level(array: np.ndarray) -> float:
    """The background level: the median of the border over all channels."""
    return float(np.median(border_values(array.mean(axis=2))))


def _ink(level: float) -> int:
    """The extreme farthest from the background: the object's side (0 on white, 255 on black)."""
    return 0 if level > 127.5 else 255


def _as_array(image: Image.Image) -> np.ndarray:
    array = np.asarray(image, dtype=np.float64)
    return array[:, :, None] if array.ndim == 2 else array


def _to_image(array: np.ndarray, mode: str) -> Image.Image:
    pixels = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels[:, :, 0] if mode == "L" else pixels, mode)


@dataclass(frozen=True, kw_only=True)
class Transform:
    """One shift: `__call__(image, rng)` takes a decoded 8-bit 'L' or 'RGB' image, returns the same mode."""

    name: ClassVar[str]

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class GreyBackground(Transform):
    """Background moved to `level` by a linear map that keeps the far extreme (black stays black on
    a white-background image), so the object keeps its order of brightness at reduced contrast;
    then Gaussian noise of `noise_std` grey levels on every pixel."""

    name: ClassVar[str] = "grey-background"
    level: float = 128.0
    noise_std: float = 12.0

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        array = _as_array(image)
        background = _level(array)
        far = float(_ink(background))
        if abs(background - far) < 1:  # a blank image at the far extreme: nothing to anchor on
            mapped = np.full_like(array, self.level)
        else:
            mapped = far + (array - far) * (self.level - far) / (background - far)
        return _to_image(mapped + rng.normal(0.0, self.noise_std, array.shape), image.mode)


@dataclass(frozen=True, kw_only=True)
class InvertedPolarity(Transform):
    name: ClassVar[str] = "inverted"

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        return _to_image(255.0 - _as_array(image), image.mode)


@dataclass(frozen=True, kw_only=True)
class JpegRecompression(Transform):
    """JPEG at a quality drawn uniformly from [quality_low, quality_high] for each image."""

    name: ClassVar[str] = "jpeg"
    quality_low: int = 50
    quality_high: int = 75

    def __post_init__(self) -> None:
        if not 1 <= self.quality_low <= self.quality_high <= 95:
            raise ValueError(f"JPEG qualities must satisfy 1 <= low <= high <= 95, got {self}")

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        quality = int(rng.integers(self.quality_low, self.quality_high + 1))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert(image.mode)


@dataclass(frozen=True, kw_only=True)
class Rescaled(Transform):
    """Down to `factor` of the size (area averaging, as thumbnailers do), back up bilinearly."""

    name: ClassVar[str] = "rescaled"
    factor: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.factor < 1:
            raise ValueError(f"rescale factor must be in (0, 1), got {self.factor}")

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        width, height = image.size
        small = (max(1, round(width * self.factor)), max(1, round(height * self.factor)))
        down = image.resize(small, Image.Resampling.BOX)
        return down.resize((width, height), Image.Resampling.BILINEAR)


@dataclass(frozen=True, kw_only=True)
class CornerDisc(Transform):
    """A filled disc of radius `radius_fraction` of the shorter side (at least 2 px), inset from a
    corner drawn at random by half its radius, in the object's ink (`_ink`): a scale marker, bright
    once polarity is normalised. It stays off the border rows, so it does not move the background
    estimate; it is what a classifier must learn to ignore."""

    name: ClassVar[str] = "corner-disc"
    radius_fraction: float = 0.08

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        width, height = image.size
        radius = max(2, round(min(width, height) * self.radius_fraction))
        inset = 1 + radius // 2
        right, bottom = bool(rng.integers(2)), bool(rng.integers(2))
        cx = width - 1 - inset - radius if right else inset + radius
        cy = height - 1 - inset - radius if bottom else inset + radius
        ink = _ink(_level(_as_array(image)))
        out = image.copy()
        fill = ink if image.mode == "L" else (ink, ink, ink)
        ImageDraw.Draw(out).ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
        return out


@dataclass(frozen=True, kw_only=True)
class HalfContrast(Transform):
    """Every pixel's distance from the background level multiplied by `factor`."""

    name: ClassVar[str] = "half-contrast"
    factor: float = 0.5

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        array = _as_array(image)
        level = _level(array)
        return _to_image(level + (array - level) * self.factor, image.mode)


@dataclass(frozen=True, kw_only=True)
class Combined(Transform):
    """Several shifts applied one after another, each drawing from the same image's generator. The
    default order is a processing chain's: the instrument's background, the scale marker drawn on the
    frame, the thumbnail's resizing, the JPEG it is published as. Shifts rarely come one at a time,
    and their costs need not add up: this is the figure closest to a new instrument."""

    name: ClassVar[str] = "combined"
    steps: tuple[Transform, ...] = (GreyBackground(), CornerDisc(), Rescaled(), JpegRecompression())

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a combined shift needs at least one step")

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        for step in self.steps:
            image = step(image, rng)
        return image


DEFAULT_SHIFTS: dict[str, Transform] = {
    t.name: t
    for t in (
        GreyBackground(),
        InvertedPolarity(),
        JpegRecompression(),
        Rescaled(),
        CornerDisc(),
        HalfContrast(),
        Combined(),
    )
}
if tuple(DEFAULT_SHIFTS) != SHIFT_NAMES:
    raise RuntimeError("ShiftName and DEFAULT_SHIFTS must list the shifts in one order")


def image_rng(seed: int, shift: str, path: str) -> np.random.Generator:
    """The draws of one image under one shift: from (seed, shift, path), never from the order."""
    return np.random.default_rng([seed, zlib.crc32(shift.encode()), zlib.crc32(path.encode())])


def apply_shift(transform: Transform, image: Image.Image, *, seed: int, path: str) -> Image.Image:
    return transform(image, image_rng(seed, transform.name, path))


def build_shift_zips(
    source: Path | str,
    *,
    out_dir: Path | str,
    paths: Sequence[str] | None = None,
    shifts: Mapping[str, Transform] | Sequence[ShiftName] = SHIFT_NAMES,
    seed: int = 0,
    name: str | None = None,
) -> dict[str, Path]:
    """One zip per shift, `<out_dir>/<name>-<shift>.zip`, of the raw images `paths` of `source` (a
    zip or folder in the shared layout; default every image; for the benchmark, the clean test
    split's, see `split_test_paths`). Returns {shift: zip path}. Unreadable images are left out (prepare
    lists them for the clean set). An existing zip is rewritten."""
    if not isinstance(shifts, Mapping):
        unknown = sorted(set(shifts) - set(SHIFT_NAMES))
        if unknown:
            raise ValueError(f"unknown shift(s) {unknown}; known: {', '.join(SHIFT_NAMES)}")
        shifts = {s: DEFAULT_SHIFTS[s] for s in shifts}
    collection = Collection(source)
    name = name or Path(source).stem
    items = {item.path: item for item in collection.items}
    wanted = list(items) if paths is None else list(paths)
    missing = [p for p in wanted if p not in items]
    if missing:
        raise ValueError(f"{source}: {len(missing)} requested image(s) not in it, e.g. {missing[0]!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = {}
    for path in wanted:
        try:
            images[path] = decode(collection.read_bytes(path))
        except ValueError:  # ImageRejected: prepare reports these for the clean set
            continue
    written = {}
    for shift, transform in shifts.items():
        top = f"{name}-{shift}"
        target = out_dir / f"{top}.zip"
        manifest = io.StringIO()
        fields = ["path", "label", "orig_width", "orig_height", "downscaled", "source_path"]
        writer = csv.DictWriter(manifest, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        with zipfile.ZipFile(target.with_suffix(".tmp"), "w", zipfile.ZIP_STORED) as archive:
            for path, image in images.items():
                item = items[path]
                shifted = apply_shift(transform, image, seed=seed, path=path)
                member = str(PurePosixPath(path).with_suffix(".png"))
                buffer = io.BytesIO()
                shifted.save(buffer, format="PNG")
                _write_member(archive, f"{top}/{member}", buffer.getvalue())
                writer.writerow(
                    {
                        "path": member,
                        "label": item.label,
                        # The original size travels, so size features and keep-scale see the
                        # organism's size, not the packager's.
                        "orig_width": item.orig_width or image.size[0],
                        "orig_height": item.orig_height or image.size[1],
                        "downscaled": int(bool(item.orig_width) and item.orig_width != image.size[0]),
                        "source_path": path,
                    }
                )
            _write_member(archive, f"{top}/{MANIFEST_NAME}", manifest.getvalue().encode())
        target.with_suffix(".tmp").replace(target)
        written[shift] = target
    return written


def _write_member(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    """Store `data` uncompressed as `name`, dated `ZIP_DATE` (not the clock) and readable by all."""
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def split_test_paths(dataset: PreparedDataset, split: Split) -> list[str]:
    """The source paths of a split's test rows: what `build_shift_zips` should shift."""
    return dataset.meta["path"].iloc[split.indices("test")].tolist()


def shift_split(shifted: PreparedDataset, clean_split: Split) -> Split:
    """Every image of a prepared shift zip as test, labelled with the clean split's class list
    (images of classes outside it are left out), named `processing-shift`."""
    lookup = {c: i for i, c in enumerate(clean_split.classes)}
    targets = shifted.meta["label"].map(lookup).fillna(-1).to_numpy(np.int64)
    empty = np.array([], dtype=np.int64)
    rows = {"train": empty, "val": empty, "test": np.flatnonzero(targets >= 0)}
    return Split(name=SPLIT_NAME, rows=rows, targets=targets, classes=list(clean_split.classes))


def shifted_sets(stores: Mapping[str, FeatureStore], clean_split: Split) -> list[Shifted]:
    """`Shifted` test sets for `probe_features`, from {shift: feature store of its prepared zip}."""
    sets = []
    for shift, store in stores.items():
        dataset = PreparedDataset.open(store.info["dataset"])
        sets.append(Shifted(name=shift, store=store, split=shift_split(dataset, clean_split)))
    return sets


def shift_source_rows(shifted: PreparedDataset, clean: PreparedDataset) -> np.ndarray:
    """The row of `clean` each image of a prepared shift zip was made from (-1 where none): a shift
    zip stores `<path>` of the raw source as `<path>.png`, which is how the two are matched."""
    lookup = {str(PurePosixPath(p).with_suffix(".png")): row for row, p in enumerate(clean.meta["path"])}
    return np.array([lookup.get(p, -1) for p in shifted.meta["path"]], dtype=np.int64)


def prepare_shifts(
    source: Path | str,
    clean: PreparedDataset,
    split: Split,
    *,
    out_dir: Path | str,
    name: str,
    shifts: Sequence[ShiftName] = SHIFT_NAMES,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, PreparedDataset]:
    """The test images of `split` on `clean`, shifted from the raw files of `source` (the collection
    `clean` was prepared from) and prepared exactly as `clean` was (`prepare_like`), as
    {shift: prepared dataset named `<name>-<shift>`}. Refused when a prepared image is not one of
    those test images: each is scored as a test image of the backbone's dataset, so it must be one."""
    zips = build_shift_zips(
        source,
        out_dir=out_dir,
        paths=split_test_paths(clean, split),
        shifts=shifts,
        seed=seed,
        name=name,
    )
    test = set(split.indices("test").tolist())
    prepared = {}
    for shift, path in zips.items():
        dataset = prepare_like(path, clean, name=f"{name}-{shift}", show_progress=show_progress)
        strays = [r for r in shift_source_rows(dataset, clean).tolist() if r not in test]
        if strays:
            raise ValueError(
                f"{path}: {len(strays)} shifted image(s) are not test images of split {split.name} "
                f"on {clean.name}; was {source} the source {clean.name} was prepared from?"
            )
        prepared[shift] = dataset
    return prepared


def extract_like(
    store: FeatureStore,
    dataset: PreparedDataset,
    *,
    out: Path | str,
    pairs: Sequence[str] | None = None,
    split: Split | None = None,
) -> FeatureStore:
    """The rows of `dataset` (every row, or those of `split`'s parts) through the backbone and
    extraction settings `store` was made with, for `pairs` of it only (default: all): the DDPM's
    blocks and timesteps are cut to those the pairs name; a baseline extracts its few blocks in one
    forward pass anyway (it reads its rows from a saved split: `split` is saved on `dataset`); raw
    pixels are pixels."""
    from plankdiff.features.pairs import Selection
    from plankdiff.features.raw import RAW_METHOD, RAW_PAIR, raw_pixel_store, stored_orientations

    info = store.info
    if split is None:
        rows = np.arange(len(dataset))
    else:
        rows = np.unique(np.concatenate([split.indices(part) for part in ("train", "val", "test")]))
    wanted = [p for component in (pairs or store.pairs) for p in Selection.parse(component).names]
    unknown = sorted(set(wanted) - set(store.pairs))
    if unknown:
        raise ValueError(f"{store.root}: no pair(s) {unknown}; it has {', '.join(store.pairs[:6])}")
    if info.get("model_hash") == RAW_METHOD and store.pairs == [RAW_PAIR]:
        return raw_pixel_store(dataset, rows=rows, out=out, orientations=stored_orientations(info))
    if "baseline" in info:
        from plankdiff.baselines.extract import extract_baseline_features

        orientations = info["request"].get("orientations", 1)
        if split is not None:
            split.save(dataset)
        return extract_baseline_features(
            info["baseline"]["run"],
            dataset,
            out=out,
            split=None if split is None else split.name,
            orientations=orientations,
            show_progress=False,
        )
    if not info.get("backbone"):
        raise ValueError(f"{store.root}: the store records no backbone run to extract new images with")
    from plankdiff.diffusion.model import load_backbone
    from plankdiff.features.extract import ExtractionRequest, extract_features

    axes = {p["name"]: (p["block"], p["t"]) for p in store.pair_table()}
    request = dict(info["request"])
    request["blocks"] = tuple(dict.fromkeys(axes[p][0] for p in wanted))
    request["timesteps"] = tuple(sorted({axes[p][1] for p in wanted}))
    unet, scheduler = load_backbone(info["backbone"], device="auto")
    return extract_features(
        unet,
        scheduler,
        dataset,
        out=out,
        request=ExtractionRequest(**request),
        rows=rows,
        model_id=info["model_hash"],
        backbone=Path(info["backbone"]),
        show_progress=False,
    )


def processing_shift_scores(
    store: FeatureStore,
    split: Split,
    shifted: Mapping[str, FeatureStore],
    *,
    seed: int = 0,
    out: Path | None = None,
    config: dict | None = None,
    **probe_arguments,
) -> tuple[ProbeResult, pd.DataFrame]:
    """The probe selected on `split`'s validation rows of `store`, applied to the clean test rows and
    to each shifted store ({shift: store}), and `processing_shift_table` of the result."""
    result = probe_features(
        store,
        split,
        shifted=shifted_sets(shifted, split),
        seed=seed,
        out=out,
        config=config,
        **probe_arguments,
    )
    return result, processing_shift_table(result, list(shifted))


def shifted_dataset_scores(
    store: FeatureStore,
    split: Split,
    shifted: Mapping[str, PreparedDataset],
    *,
    features_dir: Path,
    prefix: str = "",
    pairs: Sequence[str] | None = None,
    seed: int = 0,
    out: Path | None = None,
    config: dict | None = None,
    **probe_arguments,
) -> tuple[ProbeResult, pd.DataFrame]:
    """`store`'s features of each shifted dataset ({shift: prepared dataset}; `pairs` only, default
    all), extracted into `features_dir/<prefix><shift>`, then `processing_shift_scores` on them."""
    stores = {
        shift: extract_like(store, dataset, out=Path(features_dir) / f"{prefix}{shift}", pairs=pairs)
        for shift, dataset in shifted.items()
    }
    return processing_shift_scores(store, split, stores, seed=seed, out=out, config=config, **probe_arguments)


def processing_shift_table(result: ProbeResult, shifts: Sequence[str] | None = None) -> pd.DataFrame:
    """One row for the clean test and one per shift: accuracy, macro-F1, their drops from the clean
    test (fractions; positive = worse) and whether the drop meets the goal (<= 10 points)."""
    names = list(result.shifted) if shifts is None else list(shifts)
    missing = [s for s in names if s not in result.shifted]
    if missing:
        raise ValueError(f"the probe result was not scored on shift(s) {missing}")
    clean = result.test
    rows = [{"set": "clean", **_scores(clean)}]
    for shift in names:
        rows.append({"set": shift, **_scores(result.shifted[shift])})
    table = pd.DataFrame(rows)
    table["accuracy_drop"] = clean["accuracy"] - table["accuracy"]
    table["macro_f1_drop"] = clean["macro_f1"] - table["macro_f1"]
    table["meets_goal"] = table["accuracy_drop"] <= GOAL_MAX_DROP
    return table


def _scores(metrics: Mapping) -> dict:
    return {
        "n": int(metrics["n"]),
        "accuracy": float(metrics["accuracy"]),
        "macro_f1": float(metrics["macro_f1"]),
    }


__all__ = [
    "DEFAULT_SHIFTS",
    "GOAL_MAX_DROP",
    "SHIFT_NAMES",
    "CornerDisc",
    "GreyBackground",
    "HalfContrast",
    "InvertedPolarity",
    "JpegRecompression",
    "Rescaled",
    "ShiftName",
    "Transform",
    "apply_shift",
    "build_shift_zips",
    "extract_like",
    "prepare_shifts",
    "processing_shift_scores",
    "processing_shift_table",
    "shift_source_rows",
    "shift_split",
    "shifted_dataset_scores",
    "shifted_sets",
    "split_test_paths",
]
