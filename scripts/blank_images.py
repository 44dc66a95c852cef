"""What docs/results/data.md ("Frame-filling objects blanked by the border-noise estimate") measured:
each collection prepared twice with `plankdiff.data.prepare.prepare`, with the ceiling on the
border's noise spread (`NOISE_CEILING`, what new preparations use) and without it (`noise_ceiling=None`,
every preparation made before it), and for each: the images that came out all zero, per class, and
the images whose pixels differ at all between the two.

    python scripts/blank_images.py ../shared/datasets/ndsb.zip ../shared/datasets/zoolake.zip \\
        ../shared/datasets/pwssc.zip --out /tmp/nc-blank

Writes OUT/<name>-capped and OUT/<name>-uncapped (the preparations; rerunning reuses them) and
OUT/<name>-blank-per-class.csv; prints one markdown table over the collections and, per collection,
the classes with blank images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from plankdiff.data.prepare import PreparedDataset, prepare
from plankdiff.data.preprocess import NOISE_CEILING


def blank(dataset: PreparedDataset) -> np.ndarray:
    """One bool per image: every pixel of it is 0."""
    images = np.asarray(dataset.images)
    return images.reshape(len(images), -1).max(axis=1) == 0


def compare(source: Path, out: Path, *, size: int = 32) -> tuple[dict, pd.DataFrame]:
    """The collection's counts (images, blank with and without the ceiling, changed) and the blank
    images per class (only classes with one), from its two preparations."""
    name = source.stem
    made = {
        ceiling: prepare(
            source,
            name=f"{name}-{label}",
            size=size,
            noise_ceiling=ceiling,
            out_dir=out / f"{name}-{label}",
            show_progress=False,
        )
        for ceiling, label in ((NOISE_CEILING, "capped"), (None, "uncapped"))
    }
    capped, uncapped = made[NOISE_CEILING], made[None]
    if not capped.meta["path"].equals(uncapped.meta["path"]):
        raise ValueError(f"{source}: the two preparations hold different images")
    blank_capped, blank_uncapped = blank(capped), blank(uncapped)
    pixels_capped, pixels_uncapped = np.asarray(capped.images), np.asarray(uncapped.images)
    changed = (pixels_capped != pixels_uncapped).reshape(len(capped), -1).any(axis=1)
    counts = {
        "dataset": name,
        "images": len(capped),
        "blank without the ceiling": int(blank_uncapped.sum()),
        "blank with the ceiling": int(blank_capped.sum()),
        "pixels changed": int(changed.sum()),
    }
    per_class = (
        pd.DataFrame(
            {
                "label": capped.meta["label"],
                "images": 1,
                "blank_without": blank_uncapped,
                "blank_with": blank_capped,
                "changed": changed,
            }
        )
        .groupby("label", as_index=False)
        .sum()
    )
    per_class = per_class[(per_class["blank_without"] > 0) | (per_class["blank_with"] > 0)]
    return counts, per_class.sort_values("blank_without", ascending=False).reset_index(drop=True)


def markdown(frame: pd.DataFrame) -> str:
    rows = [frame.columns.tolist(), ["---"] * frame.shape[1], *frame.astype(str).to_numpy().tolist()]
    return "\n".join("| " + " | ".join(map(str, row)) + " |" for row in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", type=Path, help="zips or folders of images")
    parser.add_argument("--out", type=Path, required=True, help="folder for the preparations")
    parser.add_argument("--size", type=int, default=32, help="side of the prepared images, pixels")
    args = parser.parse_args(argv)
    totals = []
    for source in args.sources:
        counts, per_class = compare(source, args.out, size=args.size)
        per_class.to_csv(args.out / f"{source.stem}-blank-per-class.csv", index=False)
        totals.append(counts)
        print(f"\n{source.stem}: classes with blank images\n")
        print(markdown(per_class) if len(per_class) else "(none)")
    print("\n" + markdown(pd.DataFrame(totals)))


if __name__ == "__main__":
    main()
