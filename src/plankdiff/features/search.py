"""Coarse-to-fine search: rank every (block, t) pair on a small stratified subset, then extract
only the best timesteps for every image.

Extraction cost is (images × timesteps) forward passes; the full default grid of 9 timesteps on
30k NDSB images is ~270k passes, over an hour on 2 CPU cores. Ranking pairs needs far fewer
images than the final probe does, so the full grid is extracted for `per_class_train` training
and `per_class_val` validation images per class, and only the `keep_timesteps` best timesteps
(by validation macro-F1 of their best block) are extracted for all images. Optionally only the
`keep_blocks` best blocks at those timesteps are kept, which lets the forward pass stop early and
pays for `fine_orientations` = 8 (orientation averaging) on every image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from diffusers import DDPMScheduler, UNet2DModel

from plankdiff.data.prepare import PreparedDataset
from plankdiff.data.splits import Split
from plankdiff.features.extract import ExtractionRequest, extract_features
from plankdiff.features.store import FeatureStore
from plankdiff.probe.linear import fit_probe_grid
from plankdiff.probe.metrics import plot_heatmap
from plankdiff.probe.selection import rank
from plankdiff.provenance import write_json


@dataclass
class SearchResult:
    coarse: FeatureStore
    fine: FeatureStore
    ranking: pd.DataFrame  # per pair: block, t, val_macro_f1, val_accuracy on the subset
    kept_timesteps: tuple[int, ...]
    kept_blocks: tuple[str, ...] | None  # None: every block
    seconds: dict[str, float]


def stratified_subset(
    split: Split, *, per_class_train: int, per_class_val: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Up to `per_class_*` rows of each class from the train and val splits (dataset row indices)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, cap in (("train", per_class_train), ("val", per_class_val)):
        rows = split.indices(name)
        labels = split.targets[rows]
        chosen = [
            rng.choice(rows[labels == c], min(cap, int((labels == c).sum())), replace=False)
            for c in np.unique(labels)
        ]
        out[name] = np.sort(np.concatenate(chosen))
    return out


def rank_pairs(
    store: FeatureStore, split: Split, subset: dict[str, np.ndarray], **probe_options
) -> pd.DataFrame:
    rows = np.concatenate([subset["train"], subset["val"]])
    positions = store.positions(rows)
    features = {p: np.asarray(store.load(p)[positions], dtype=np.float32) for p in store.pairs}
    labels = split.targets[rows]
    n_train = len(subset["train"])
    grid = fit_probe_grid(
        features,
        labels,
        train=np.arange(n_train),
        val=np.arange(n_train, len(rows)),
        n_classes=len(split.classes),
        **probe_options,
    )
    axes = {p["name"]: p for p in store.pair_table()}
    best = grid.best_per_pair()
    best["block"] = [axes[p]["block"] for p in best["pair"]]
    best["t"] = [axes[p]["t"] for p in best["pair"]]
    return rank(best).reset_index(drop=True)


def plot_ranking(ranking: pd.DataFrame, out: Path, *, kept: tuple[int, ...] = ()) -> Path:
    """The (block × t) heatmap of subset validation macro-F1, the best pair boxed."""
    best = ranking.iloc[0]
    order = list(dict.fromkeys(ranking.sort_values("block", key=_forward_order)["block"]))
    table = ranking.assign(value=ranking["val_macro_f1"]).set_index("block").loc[order].reset_index()
    title = "coarse search: validation macro-F1 on the subset"
    if kept:
        title += f" (kept t = {', '.join(map(str, kept))})"
    return plot_heatmap(
        table[["block", "t", "value"]], selected=(best["block"], int(best["t"])), out=out, title=title
    )


def _forward_order(blocks: pd.Series) -> pd.Series:
    stage = {"enc": 0, "mid": 1, "dec": 2}
    return blocks.map(lambda b: (stage[b[:3]], int(b[3:].split("@")[0] or 0) if b[:3] != "mid" else 0))


def coarse_to_fine(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    dataset: PreparedDataset,
    split: Split,
    *,
    out: Path | str,
    model_id: str,
    request: ExtractionRequest = ExtractionRequest(),
    per_class_train: int = 20,
    per_class_val: int = 10,
    keep_timesteps: int = 2,
    seed: int = 0,
    show_progress: bool = True,
    probe_options: dict | None = None,
    fine_rows: np.ndarray | None = None,
    keep_blocks: int | None = None,
    fine_orientations: int | None = None,
    backbone: Path | None = None,
) -> SearchResult:
    """`fine_rows`: the dataset rows to extract the kept timesteps for (default: every row of `split`).
    `keep_blocks`: keep only this many blocks, ranked by their best subset macro-F1 at the kept
    timesteps (default: every block). `fine_orientations`: orientations of the fine pass (default:
    those of `request`), so the subset ranking can stay at 1 orientation."""
    if not (keep_blocks is None or keep_blocks >= 1):
        raise ValueError(f"keep_blocks must be at least 1, got {keep_blocks}")
    out = Path(out)
    subset = stratified_subset(split, per_class_train=per_class_train, per_class_val=per_class_val, seed=seed)
    started = time.perf_counter()
    coarse = extract_features(
        unet,
        scheduler,
        dataset,
        out=out / "coarse",
        request=request,
        rows=np.concatenate([subset["train"], subset["val"]]),
        model_id=model_id,
        backbone=backbone,
        show_progress=show_progress,
    )
    coarse_seconds = time.perf_counter() - started
    ranking = rank_pairs(coarse, split, subset, seed=seed, **(probe_options or {}))
    # Each timestep (then each block) stands for its best pair under the one selection rule, and
    # they are ranked by the same rule, ties between them broken by t (block name) ascending.
    by_t = rank(rank(ranking).groupby("t", sort=False).head(1), name="t")
    kept = tuple(sorted(int(t) for t in by_t["t"].head(keep_timesteps)))
    kept_blocks = None
    if keep_blocks is not None:
        at_kept = rank(ranking[ranking["t"].isin(kept)])
        by_block = rank(at_kept.groupby("block", sort=False).head(1), name="block")
        kept_blocks = tuple(by_block["block"].head(keep_blocks))
    fine_request = replace(
        request,
        timesteps=kept,
        blocks=kept_blocks or request.blocks,
        orientations=fine_orientations or request.orientations,
    )
    every_row = (
        np.sort(np.concatenate([split.indices(s) for s in ("train", "val", "test")]))
        if fine_rows is None
        else np.sort(np.asarray(fine_rows, dtype=np.int64))
    )
    started = time.perf_counter()
    fine = extract_features(
        unet,
        scheduler,
        dataset,
        out=out / "fine",
        request=fine_request,
        rows=every_row,
        model_id=model_id,
        backbone=backbone,
        show_progress=show_progress,
    )
    seconds = {"coarse": coarse_seconds, "fine": time.perf_counter() - started}
    ranking.to_csv(out / "coarse_ranking.csv", index=False)
    plot_ranking(ranking, out / "coarse_heatmap.png", kept=kept)
    write_json(
        out / "search.json",
        {
            "kept_timesteps": kept,
            "kept_blocks": kept_blocks,
            "fine_orientations": fine_request.orientations,
            "subset": {k: len(v) for k, v in subset.items()},
            "per_class_train": per_class_train,
            "per_class_val": per_class_val,
            "seconds": seconds,
            "coarse_forward_passes": len(coarse.rows)
            * len(request.timesteps)
            * request.noise_draws
            * request.orientations,
            "fine_forward_passes": len(fine.rows)
            * len(kept)
            * fine_request.noise_draws
            * fine_request.orientations,
        },
    )
    return SearchResult(coarse, fine, ranking, kept, kept_blocks, seconds)
