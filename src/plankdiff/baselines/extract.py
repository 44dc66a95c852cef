"""Frozen features of a baseline run, written in the diffusion feature store's layout so the probe
reads both alike: one float16 `[N, D]` array per feature block, as pairs with t = None (`layer3@8`,
`layer4@4`, `pool`; `block4`, `block6`, `pool` for MAE).

The weights are the newest checkpoint of the run; the store's `model_hash` is the hash of that
checkpoint's `model.safetensors`, so a store is reused, resumed or refused as for diffusion features.
The network runs in eval mode (batch-norm running statistics, no dropout) under inference mode, one
batch at a time; progress is flushed every `checkpoint_rows` rows, and an interrupted extraction resumes.

A method with its own classifier (`supervised`) also gets `logits.npy` (float16 [N, classes], the
store's row order) and, when the store holds the val or test rows of the run's split, `own_head.json`
with its accuracy and macro-F1 there: the "own head" line of a report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from plankdiff.baselines.registry import Method, get_method
from plankdiff.baselines.train import BASELINE_FILE, BaselineConfig
from plankdiff.data.prepare import PreparedDataset
from plankdiff.data.splits import SPLITS, Split
from plankdiff.devices import torch_device
from plankdiff.diffusion.checkpoint import latest_checkpoint
from plankdiff.diffusion.train import dihedral_augment_all, to_model_range
from plankdiff.features.pairs import Pair
from plankdiff.features.store import FeatureStore
from plankdiff.precision import autocast, resolve_precision
from plankdiff.probe.metrics import classification_metrics
from plankdiff.probe.protocol import Orientations
from plankdiff.progress import progress_bar
from plankdiff.provenance import git_sha, read_json, sha256_file, sha256_json, write_json

LOGITS_FILE = "logits.npy"
WEIGHTS_FILE = "model.safetensors"  # of a checkpoint: the weights features are read with
OWN_HEAD_FILE = "own_head.json"


def is_baseline_run(run: Path | str) -> bool:
    return (Path(run) / BASELINE_FILE).exists()


def load_baseline(run: Path | str) -> tuple[Method, dict, Path]:
    """The method of a baseline run with the weights of its newest checkpoint, frozen in eval mode;
    also the run's `baseline.json` and the checkpoint folder."""
    run = Path(run)
    info = read_json(run / BASELINE_FILE)
    checkpoint = latest_checkpoint(run / "checkpoints")
    if checkpoint is None:
        raise FileNotFoundError(f"{run}: no checkpoint yet; train it with `plankdiff baseline train`")
    return build_baseline(info, checkpoint / WEIGHTS_FILE), info, checkpoint


def build_baseline(info: dict, weights: Path) -> Method:
    """The method `info` (a run's `baseline.json`) describes, with `weights`, frozen in eval mode."""
    config = BaselineConfig.model_validate(info["config"])
    channels, size, _ = info["image_shape"]
    method = get_method(config.method).build(
        channels=channels,
        size=size,
        width=config.width,
        n_classes=len(info["classes"]) if info["classes"] else None,
    )
    method.load_state_dict(load_file(weights))
    return method.eval().requires_grad_(False)


def extract_baseline_features(
    run: Path | str,
    dataset: PreparedDataset,
    *,
    out: Path | str,
    split: str | None = None,
    batch_size: int = 256,
    device: str = "auto",
    show_progress: bool = True,
    checkpoint_rows: int = 2048,
    orientations: Orientations = 1,
) -> FeatureStore:
    """Write every feature block of the run's method for the rows of `split` (train, val and test;
    every row of `dataset` without one) to the store at `out`. `orientations` 8 averages each
    block's features over the flips and 90° rotations, as the DDPM's extraction does."""
    out = Path(out)
    method, info, checkpoint = load_baseline(run)
    target = torch_device(device)
    method = method.to(target)
    shape = list(dataset.images.shape[1:])
    if shape != info["image_shape"]:
        raise ValueError(
            f"{dataset.root}: images are {shape}, the run {run} was trained on {info['image_shape']}"
        )
    if split:
        chosen = Split.load(dataset, split)
        rows = np.unique(np.concatenate([chosen.indices(s) for s in SPLITS]))
    else:
        rows = np.arange(len(dataset))
    blocks = method.feature_blocks()
    pairs = [
        {
            "name": Pair(b.name).name,
            "block": b.name,
            "resolution": b.resolution,
            "channels": b.channels,
            "dim": b.dim,
            "pooling": b.pooling,
            "t": None,
        }
        for b in blocks
    ]
    identity = {
        "model_hash": sha256_file(checkpoint / WEIGHTS_FILE),
        "dataset_key": dataset.key,
        "rows_hash": sha256_json(rows.tolist()),
        "request": {"method": info["method"], "blocks": [b.name for b in blocks]}
        | ({"orientations": orientations} if orientations != 1 else {}),
    }
    store_info = {
        **identity,
        "key": sha256_json(identity),
        "dataset": dataset.name,
        "dataset_root": str(dataset.root),
        "rows": rows.tolist(),
        "classes": dataset.classes,
        "pairs": pairs,
        "blocks": [b.__dict__ for b in blocks],
        "baseline": {
            "run": str(run),
            "checkpoint": checkpoint.name,
            "method": info["method"],
            "parameters": info["parameters"],
            "split": info["split"],
        },
        "git_sha": git_sha(),
    }
    if (out / "store.json").exists() and FeatureStore(out).info["key"] != store_info["key"]:
        raise FileExistsError(
            f"{out}: holds features of another model, dataset or request; choose another --out or delete it"
        )
    store = FeatureStore(out)
    if not store.complete:
        store = FeatureStore.create(out, store_info, {p["name"]: p["dim"] for p in pairs}, backbone=Path(run))
        _fill(
            store,
            method,
            dataset,
            rows=rows,
            device=target,
            batch_size=batch_size,
            checkpoint_rows=checkpoint_rows,
            show_progress=show_progress,
            orientations=orientations,
        )
    if method.uses_labels and dataset.key == info["dataset"]["key"] and info["split"]:
        logits = np.load(out / LOGITS_FILE, mmap_mode="r")
        write_json(out / OWN_HEAD_FILE, own_head_scores(store, Split.load(dataset, info["split"]), logits))
    return store


def _fill(
    store: FeatureStore,
    method: Method,
    dataset: PreparedDataset,
    *,
    rows: np.ndarray,
    device: torch.device,
    batch_size: int,
    checkpoint_rows: int,
    show_progress: bool,
    orientations: Orientations = 1,
) -> None:
    """Stream the rows not done yet through the method's feature network into the store's arrays."""
    arrays = store.open_arrays()
    logits = _open_logits(store.root, len(rows), method.n_classes) if method.uses_labels else None
    start = store.rows_done()
    with progress_bar(f"features {method.name}", total=len(rows), enabled=show_progress) as advance:
        advance(start)
        since_checkpoint = 0
        for begin in range(start, len(rows), batch_size):
            batch_rows = rows[begin : begin + batch_size]
            x = to_model_range(torch.from_numpy(np.ascontiguousarray(dataset.images[batch_rows]))).to(device)
            features, head = method_features(method, x, orientations=orientations)
            for name, value in features.items():
                arrays[name][begin : begin + len(batch_rows)] = value.float().cpu().numpy().astype(np.float16)
            if logits is not None:
                logits[begin : begin + len(batch_rows)] = head.float().cpu().numpy().astype(np.float16)
            since_checkpoint += len(batch_rows)
            if since_checkpoint >= checkpoint_rows or begin + batch_size >= len(rows):
                for array in [*arrays.values(), *([logits] if logits is not None else [])]:
                    array.flush()
                store.mark_done(begin + len(batch_rows))
                since_checkpoint = 0
            advance(len(batch_rows))


def method_features(
    method: Method, x: torch.Tensor, *, orientations: Orientations = 1
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Every feature block of `x` (model range, on the method's device), averaged over the flips and
    90° rotations when `orientations` is 8, and the method's own head on the first view (or None).
    The one path from pixels to baseline features: extraction and a deployed classifier both use it."""
    with (
        torch.inference_mode(),
        autocast(x.device, resolve_precision("auto", x.device, cpu_auto=False)),
    ):
        views = dihedral_augment_all(x) if orientations == 8 else [x]
        per_view = [method.backbone_features(v) for v in views]
        features = {k: sum(f[k].float() for f in per_view) / len(views) for k in per_view[0]}
        return features, method.head_logits(per_view[0])


def _open_logits(out: Path, n: int, n_classes: int) -> np.ndarray:
    path = out / LOGITS_FILE
    if path.exists():
        return np.load(path, mmap_mode="r+")
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, n_classes))


def own_head_scores(store: FeatureStore, split: Split, logits: np.ndarray) -> dict:
    """Accuracy, macro-F1 and balanced accuracy of the method's own classifier on the split's val
    and test rows that the store holds (its classes are the split's)."""
    present = set(store.rows.tolist())
    scores: dict = {"split": split.name, "classes": split.classes}
    for part in ("val", "test"):
        rows = np.array([r for r in split.indices(part) if int(r) in present], dtype=np.int64)
        if len(rows) == 0:
            continue
        predicted = logits[store.positions(rows)].astype(np.float32).argmax(axis=1)
        metrics = classification_metrics(split.targets[rows], predicted, len(split.classes), bootstrap=0)
        scores[part] = {k: metrics[k] for k in ("accuracy", "macro_f1", "balanced_accuracy", "n")}
    return scores
