"""What a prepared dataset holds: counts, sizes, time range, and a contact sheet to look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from plankdiff.data.prepare import PreparedDataset


def summarise(dataset: PreparedDataset) -> dict:
    meta = dataset.meta
    counts = meta["label"].value_counts()
    times = pd.to_datetime(meta["capture_time"].replace("", None), utc=True, errors="coerce")
    known = times.dropna()
    return {
        "name": dataset.name,
        "images": len(dataset),
        "classes": len(dataset.classes),
        "skipped": dataset.info["n_skipped"],
        "array": f"{tuple(dataset.images.shape)} uint8",
        "preprocess": dataset.info["preprocess"],
        "class_size": {"min": int(counts.min()), "median": float(counts.median()), "max": int(counts.max())},
        "orig_longest_side_px": {
            q: float(np.quantile(np.maximum(meta["orig_width"], meta["orig_height"]), p))
            for q, p in (("p5", 0.05), ("median", 0.5), ("p95", 0.95))
        },
        "inverted_fraction": round(float(meta["inverted"].mean()), 4),
        "capture_time": {
            "known": len(known),
            "unknown": int(times.isna().sum()),
            "first": known.min().isoformat() if len(known) else None,
            "last": known.max().isoformat() if len(known) else None,
            "per_year": {int(y): int(n) for y, n in known.dt.year.value_counts().sort_index().items()},
        },
        "per_class": {str(k): int(v) for k, v in counts.sort_index().items()},
    }


def contact_sheet(
    dataset: PreparedDataset, out: Path, *, per_class: int = 8, cell: int = 48, seed: int = 0
) -> Path:
    """One row per class: its name, then `per_class` random prepared images, upscaled for viewing."""
    rng = np.random.default_rng(seed)
    label_width = 260
    classes = dataset.classes
    sheet = Image.new("RGB", (label_width + per_class * (cell + 2), len(classes) * (cell + 2)), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    labels = dataset.labels
    for row, name in enumerate(classes):
        members = np.flatnonzero(labels == row)
        chosen = rng.choice(members, min(per_class, len(members)), replace=False)
        y = row * (cell + 2)
        draw.text((4, y + cell // 2 - 6), f"{name} ({len(members)})", fill=(230, 230, 230))
        for col, index in enumerate(sorted(chosen)):
            pixels = np.asarray(dataset.images[index])
            image = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
            sheet.paste(
                image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST),
                (label_width + col * (cell + 2), y),
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
