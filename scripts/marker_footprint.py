"""What corner-marker removal changes in a dataset: two preparations of the same source, one with
markers kept and one with them removed (`plankdiff data prepare --markers keep|remove`, everything
else equal), compared image by image.

Prints the share of images that differ at all, and the share of each image's object (pixels above
0 when kept) and of its brightness that removal turned to background (quantiles over images, the
share of images losing over 10 % of their brightness), and the classes losing the most brightness
on average. docs/results/robustness.md quotes it for NDSB, ZooLake and PWSSC:

    python scripts/marker_footprint.py $PLANKDIFF_CACHE/prepared/cpu-ndsb-32 $PLANKDIFF_CACHE/prepared/markers-ndsb-32
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from plankdiff.data.prepare import PreparedDataset

CHUNK = 4096  # images per read: the arrays stay memory-mapped


def footprint(kept: PreparedDataset, removed: PreparedDataset) -> dict[str, np.ndarray]:
    """Per image: whether it differs, the share of its object pixels and of its brightness removed."""
    n = len(kept)
    changed, pixel_share, brightness_share = np.zeros(n, bool), np.zeros(n), np.zeros(n)
    for start in range(0, n, CHUNK):
        a = np.asarray(kept.images[start : start + CHUNK], dtype=np.float64).reshape(-1, kept.images[0].size)
        b = np.asarray(removed.images[start : start + CHUNK], dtype=np.float64).reshape(a.shape)
        gone = (a > 0) & (b == 0)
        rows = slice(start, start + len(a))
        changed[rows] = (a != b).any(axis=1)
        pixel_share[rows] = gone.sum(1) / np.maximum((a > 0).sum(1), 1)
        brightness_share[rows] = (a * gone).sum(1) / np.maximum(a.sum(1), 1)
    return {"changed": changed, "pixel_share": pixel_share, "brightness_share": brightness_share}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kept", help="prepared dataset, markers kept")
    parser.add_argument("removed", help="prepared dataset of the same source, markers removed")
    parser.add_argument("--top", type=int, default=5, help="classes to list")
    args = parser.parse_args(argv)
    kept, removed = PreparedDataset.open(args.kept), PreparedDataset.open(args.removed)
    if kept.images.shape != removed.images.shape or list(kept.meta["path"]) != list(removed.meta["path"]):
        sys.exit(f"{args.kept} and {args.removed}: not the same images (shape or file list differ)")
    if (kept.params.markers, removed.params.markers) != ("keep", "remove"):
        sys.exit(
            f"{args.kept} has markers {kept.params.markers!r}, {args.removed} {removed.params.markers!r}: "
            "give the kept one first, then the removed one"
        )
    f = footprint(kept, removed)
    q = (0.5, 0.9, 0.99)
    print(f"{kept.name} → {removed.name}: {len(kept)} images, {f['changed'].mean():.1%} differ")
    print(
        "  object pixels removed, quantiles 50/90/99 %: "
        + " / ".join(f"{x:.1%}" for x in np.quantile(f["pixel_share"], q))
    )
    print(
        "  brightness removed, quantiles 50/90/99 %: "
        + " / ".join(f"{x:.1%}" for x in np.quantile(f["brightness_share"], q))
    )
    print(f"  images losing over 10 % of their brightness: {(f['brightness_share'] > 0.1).mean():.1%}")
    by_class = kept.meta.assign(share=f["brightness_share"]).groupby("label")["share"].agg(["mean", "size"])
    for label, row in by_class.sort_values("mean", ascending=False).head(args.top).iterrows():
        print(f"  {label}: {row['mean']:.1%} of brightness removed on average (n = {int(row['size'])})")


if __name__ == "__main__":
    main()
