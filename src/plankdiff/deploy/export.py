"""A trained classifier as one self-describing folder, and loading it back with every check.

    unet/               the frozen EMA denoiser (diffusers `save_pretrained`, safetensors)
    scheduler/          its noise schedule (ᾱ_t of every feature pair comes from here)
    baseline/           instead of unet/ and scheduler/, for a baseline backbone (supervised,
                        SimCLR, BYOL, DINO, MAE): its run's `baseline.json` and checkpoint weights
    probe.safetensors   the linear probe: mean, std, weight [classes, features], bias; with the
                        Mahalanobis open-set score also its class means `ood_means` [classes,
                        features] and shared precision `ood_precision` [features, features]
    quantify.safetensors  validation posteriors (temperature-scaled) and labels: what the counting
                        methods of `predict --counts` are fitted on (hashed with the rest)
    card.json           what it takes to reproduce a prediction: the (block, t) pairs with ᾱ_t and
                        width, pooling and noise draws, the preprocessing parameters, class names,
                        abstention thresholds, the open-set cut (`ood`: method, share kept,
                        threshold, shares kept on val and test), training data, metrics, git SHA,
                        plankdiff version, and the sha256 of every weight and config file

Features are only comparable when every one of those matches training, so `load_classifier`
refuses a folder whose files no longer match their hashes, whose card was written by another
major version, or whose probe does not fit its pairs and classes, naming the file at fault.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.numpy import load_file, save_file

from plankdiff import __version__
from plankdiff.baselines.extract import (
    WEIGHTS_FILE,
    build_baseline,
    is_baseline_run,
    load_baseline,
    method_features,
)
from plankdiff.baselines.registry import Method
from plankdiff.baselines.train import BASELINE_FILE
from plankdiff.choices import OODOption, OODScore
from plankdiff.data.prepare import PreparedDataset
from plankdiff.data.preprocess import PreprocessParams
from plankdiff.data.splits import SPLITS, Split
from plankdiff.deploy.calibrate import (
    DEFAULT_TARGET_PRECISION,
    Abstention,
    OpenSet,
    apply_temperature,
    calibrate_thresholds,
    decide,
    expected_calibration_error,
    fit_temperature,
    selective_scores,
)
from plankdiff.diffusion.model import load_backbone
from plankdiff.diffusion.train import to_model_range
from plankdiff.features.extract import ExtractionRequest, Extractor, model_hash, timestep_info
from plankdiff.features.pairs import Pair, Selection
from plankdiff.features.store import FeatureStore
from plankdiff.probe.linear import LinearClassifier, fit_single
from plankdiff.probe.metrics import classification_metrics
from plankdiff.probe.ood import DEFAULT_KEEP as DEFAULT_OOD_KEEP
from plankdiff.probe.ood import OOD_ARRAYS, OOD_K, Scorer, calibrate_threshold, fit_scorer, scorer_from_arrays
from plankdiff.probe.protocol import DEFAULT_OOD_SCORE, Loss
from plankdiff.probe.run import check_lineage, load_pairs
from plankdiff.provenance import git_sha, read_json, sha256_file, sha256_json, write_json

CARD_FORMAT = "plankdiff-classifier"
CARD_VERSION = 2  # 2: the card's content is hashed with the weights (`content_sha256`)
CARD_FILE = "card.json"
PROBE_FILE = "probe.safetensors"
# Validation posteriors and labels for the prior-shift corrections (`plankdiff.deploy.quantify`);
# optional, so that a classifier exported without them still loads (its `--counts` is refused).
QUANTIFY_FILE = "quantify.safetensors"
UNET_DIR = "unet"
SCHEDULER_DIR = "scheduler"
BASELINE_DIR = "baseline"
# Every file whose change would change a prediction; all are hashed into the card.
HASHED_FILES = (
    f"{UNET_DIR}/diffusion_pytorch_model.safetensors",
    f"{UNET_DIR}/config.json",
    f"{SCHEDULER_DIR}/scheduler_config.json",
    PROBE_FILE,
)
BASELINE_HASHED_FILES = (f"{BASELINE_DIR}/{BASELINE_FILE}", f"{BASELINE_DIR}/{WEIGHTS_FILE}", PROBE_FILE)
BackboneKind = Literal["diffusion", "baseline"]
UNCLASSIFIED = "unclassified"
# Beyond the open-set cut: not an image of the kind the probe was trained on, whatever it predicts.
UNKNOWN = "unknown"
# The open-set arrays stored beside the probe's in probe.safetensors (`Scorer.state_dict`), any score.
OOD_ARRAY_NAMES = tuple(dict.fromkeys(name for names in OOD_ARRAYS.values() for name in names))
# What `predict` writes for an image when the classifier has no open-set score (cards without `ood`).
NO_OOD_SCORE = ""
# The probe protocol's object size: log original width, height and object area, appended to every
# pair (as `plankdiff.probe.run.load_pairs` does), so a fused "a+b" probe reads [a, size, b, size].
SIZE_COLUMNS = 3
# The card entries that change what a prediction says: hashed together with the weight hashes, so
# renamed or swapped class names, zeroed thresholds or edited pairs are refused at load.
HASHED_CARD_KEYS = ("pairs", "extraction", "preprocess", "classes", "abstention", "calibration", "sha256")
# Entries added since: hashed when the card has them, so cards written before keep their hash (and
# removing one from a card that had it still changes the hash).
LATER_HASHED_CARD_KEYS = ("quantification", "recipe", "ood")


def card_content_hash(card: Mapping[str, Any]) -> str:
    content = {key: card.get(key) for key in HASHED_CARD_KEYS}
    return sha256_json(content | {key: card[key] for key in LATER_HASHED_CARD_KEYS if key in card})


class ModelCardError(ValueError):
    """An exported classifier that cannot be trusted as it is; the message names the file."""


def _diffusion_pairs(selection: Selection) -> Selection:
    """The selection, when every pair has a timestep: a denoiser's features are read at one."""
    for pair in selection:
        if pair.t is None:
            raise ValueError(
                f"pair {pair.name!r} has no timestep ('<block>/t=<timestep>', e.g. 'dec2@16/t=5'); "
                "baseline pairs cannot be deployed with a diffusion backbone"
            )
    return selection


def image_seed(key: str) -> int:
    """A noise seed from an image's path inside its input: stable across runs, machines and batching.

    The first 63 bits of its sha256 (Python's `hash` is salted per process, so it would not do).
    """
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") >> 1


def _block_dims(unet: UNet2DModel, scheduler: DDPMScheduler, request: ExtractionRequest) -> dict[str, int]:
    """Feature width of each requested block under the request's pooling, read off the model itself."""
    extractor = Extractor(unet, scheduler, request=request)
    try:
        return extractor.dims()
    finally:
        extractor.close()


def _request(pairs: Sequence[Pair], extraction: Mapping[str, Any]) -> ExtractionRequest:
    """One request for every pair: the union of their blocks, so each t needs one forward pass."""
    blocks = tuple(dict.fromkeys(p.block for p in pairs))
    return ExtractionRequest(
        timesteps=tuple(dict.fromkeys(p.t for p in pairs)),
        blocks=blocks,
        pooling=extraction["pooling"],
        noise_draws=extraction["noise_draws"],
        orientations=extraction["orientations"],
        sub_blocks=any("." in b for b in blocks),
    )


def fit_open_set(
    probe: LinearClassifier,
    x: Mapping[str, np.ndarray],
    train_labels: np.ndarray,
    *,
    method: OODScore = DEFAULT_OOD_SCORE,
    keep: float = DEFAULT_OOD_KEEP,
) -> tuple[OpenSet, dict[str, np.ndarray]]:
    """The open-set cut of `probe`: the score fitted on the train rows `x["train"]` (their labels
    only), its threshold set on `x["val"]` to keep a share `keep`, and the share of `x["test"]` it
    keeps measured once. Test labels are not an argument: nothing here can depend on them.
    Returns the card record and the arrays to store in probe.safetensors."""
    fitted = fit_scorer(method, probe, x["train"], train_labels, k=OOD_K)
    arrays = {name: np.asarray(a, dtype=np.float32) for name, a in fitted.state_dict().items()}
    # Calibrated with the float32 arrays the folder stores, so the cut is the deployed score's.
    scorer = scorer_from_arrays(method, probe, arrays, k=OOD_K)
    val, test = (scorer.score(x[s]) for s in ("val", "test"))
    threshold = calibrate_threshold(val, keep=keep)
    record = OpenSet(
        method=method,
        k=OOD_K if method == "knn" else None,
        keep=keep,
        threshold=threshold,
        val_kept=float((val <= threshold).mean()),
        test_kept=float((test <= threshold).mean()) if len(test) else None,
        n_val=len(val),
        n_test=len(test),
    )
    return record, arrays


def _open_set_scorer(
    open_set: OpenSet, probe: LinearClassifier, arrays: Mapping[str, np.ndarray], n_classes: int
) -> Scorer:
    """The open-set score of `arrays` in `probe`'s space; a ValueError when they are missing or do
    not fit the probe."""
    if probe.n_classes != n_classes:
        raise ValueError(f"the probe has {probe.n_classes} classes, the card {n_classes}")
    return scorer_from_arrays(open_set.method, probe, arrays, k=open_set.k or OOD_K)


def export_classifier(
    *,
    backbone_run: Path,
    dataset: PreparedDataset,
    pairs: Selection | Sequence[str],
    classifier: LinearClassifier,
    thresholds: Abstention | Mapping[str, float] | None,
    metrics: Mapping[str, Any],
    out: Path,
    classes: Sequence[str] | None = None,
    extraction: ExtractionRequest | None = None,
    calibration: Mapping[str, Any] | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    object_size: bool = False,
    open_set: OpenSet | None = None,
    open_set_arrays: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write the classifier folder `out` (replacing an earlier export there, never anything else).

    pairs: the probe's input, concatenated in this order (a `Selection`, or the pairs' names). classes: the probe's class names (default
    the dataset's; pass the split's when it relabels). thresholds: an `Abstention` from
    `calibrate_thresholds`, or per-class values set by hand, or None for no abstention.
    extraction: the request the training features were extracted with (pooling, noise draws,
    orientations are copied to the card; default: the features stage's defaults). The folder is
    written beside `out` and renamed into place, so a crash never leaves a half-written model.
    calibration: `{"temperature": T, ...}` applied to the probe's posteriors before abstention
    (default none: T = 1). validation: (posteriors [N, C] after that temperature, class indices [N])
    of the validation rows, saved for `predict --counts` (default: not saved; counting refused).
    object_size: the probe reads the log object size after every pair (`SIZE_COLUMNS` each).
    open_set, open_set_arrays: the open-set cut and its score's arrays (`fit_open_set`), stored in
    the card and in probe.safetensors (default none: no image is ever `unknown`).
    """
    out = Path(out)
    kind: BackboneKind = "baseline" if is_baseline_run(backbone_run) else "diffusion"
    selection = Selection.of(pairs)
    classes = list(classes if classes is not None else dataset.classes)
    if classifier.n_classes != len(classes):
        raise ValueError(
            f"probe has {classifier.n_classes} classes, but {len(classes)} class names were given"
        )
    settings = extraction or ExtractionRequest()
    if kind == "diffusion":
        parsed = _diffusion_pairs(selection).pairs
        extraction_card = {
            "pooling": settings.pooling,
            "noise_draws": settings.noise_draws,
            "orientations": settings.orientations,
            "noise_seed": "first 63 bits of sha256(the image's path inside its input), then (t, draw)",
            "feature_dtype": "float16 (as the feature store keeps them)",
        }
        unet, scheduler = load_backbone(backbone_run)
        dims = _block_dims(unet, scheduler, _request(parsed, extraction_card))
        pair_cards = [
            {"name": p.name, "block": p.block, "dim": dims[p.block], **timestep_info(scheduler, p.t)}
            for p in parsed
        ]
        backbone_card = {"source": str(Path(backbone_run).resolve()), "model_hash": model_hash(backbone_run)}
    else:
        method, info, checkpoint = load_baseline(backbone_run)
        dims = {b.name: b.dim for b in method.feature_blocks()}
        unknown = [p.name for p in selection if p.t is not None or p.block not in dims]
        if unknown:
            raise ValueError(
                f"{backbone_run}: {info['method']} has no feature block {unknown[0]!r} (it has {', '.join(dims)})"
            )
        extraction_card = {
            "orientations": settings.orientations,
            "feature_dtype": "float16 (as the feature store keeps them)",
        }
        pair_cards = [{"name": p.name, "block": p.block, "dim": dims[p.block], "t": None} for p in selection]
        backbone_card = {
            "source": str(Path(backbone_run).resolve()),
            "method": info["method"],
            "checkpoint": checkpoint.name,
            "model_hash": sha256_file(checkpoint / WEIGHTS_FILE),
        }
    total = sum(p["dim"] for p in pair_cards) + (SIZE_COLUMNS * len(selection) if object_size else 0)
    if classifier.n_features != total:
        raise ValueError(
            f"probe takes {classifier.n_features} features, but pairs {selection.names} give {total}"
        )
    abstention = Abstention.given(thresholds) if isinstance(thresholds, Mapping) else thresholds
    if abstention is not None and set(abstention.thresholds) != set(classes):
        raise ValueError(
            f"abstention thresholds name {sorted(abstention.thresholds)}, the probe's classes are {classes}"
        )
    ood_arrays = {k: np.asarray(v, dtype=np.float32) for k, v in (open_set_arrays or {}).items()}
    if open_set is not None:
        _open_set_scorer(open_set, classifier, ood_arrays, len(classes))  # refuses arrays that do not fit
    if out.exists() and not (out / CARD_FILE).exists():
        raise FileExistsError(f"{out} exists and is not an exported classifier; refusing to replace it")

    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    if kind == "diffusion":
        unet.save_pretrained(staging / UNET_DIR, safe_serialization=True)
        scheduler.save_pretrained(staging / SCHEDULER_DIR)
        hashed = list(HASHED_FILES)
    else:
        (staging / BASELINE_DIR).mkdir(parents=True)
        shutil.copyfile(Path(backbone_run) / BASELINE_FILE, staging / BASELINE_DIR / BASELINE_FILE)
        shutil.copyfile(checkpoint / WEIGHTS_FILE, staging / BASELINE_DIR / WEIGHTS_FILE)
        hashed = list(BASELINE_HASHED_FILES)
    save_file(classifier.state_dict() | ood_arrays, str(staging / PROBE_FILE))
    quantification = None
    if validation is not None:
        val_proba, val_labels = np.asarray(validation[0], np.float32), np.asarray(validation[1], np.int64)
        if val_proba.shape != (len(val_labels), len(classes)):
            raise ValueError(
                f"validation posteriors {val_proba.shape} for {len(val_labels)} labels and {len(classes)} classes"
            )
        save_file({"proba": val_proba, "labels": val_labels}, str(staging / QUANTIFY_FILE))
        hashed.append(QUANTIFY_FILE)
        quantification = {"file": QUANTIFY_FILE, "n_val": len(val_labels), "posteriors": "temperature-scaled"}
    card = {
        "format": CARD_FORMAT,
        "card_version": CARD_VERSION,
        "plankdiff_version": __version__,
        "git_sha": git_sha(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backbone": backbone_card,
        "pairs": pair_cards,
        "extraction": extraction_card,
        "preprocess": dataset.info["preprocess"],
        "classes": classes,
        "abstention": abstention.to_card() if abstention is not None else None,
        "calibration": dict(calibration) if calibration is not None else {"temperature": 1.0},
        "quantification": quantification,
        "ood": open_set.to_card() if open_set is not None else None,
        # How the features reaching the probe are built, beyond the pairs: predict does the same.
        "recipe": {
            "backbone": kind,
            "object_size": bool(object_size),
            "fused_pairs": len(pairs),
            "orientations": settings.orientations,
        },
        "training_data": {
            "name": dataset.name,
            "key": dataset.key,
            "source": dataset.info.get("source"),
            "source_hash": dataset.info.get("source_hash"),
        },
        "metrics": dict(metrics),
        "sha256": {name: sha256_file(staging / name) for name in hashed},
    }
    card["content_sha256"] = card_content_hash(card)
    write_json(staging / CARD_FILE, card)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


@dataclass
class _StoreOn(FeatureStore):
    """A feature store read with the dataset `export` opened and checked: `--data` may name one that
    the store's own record (a dataset name) does not resolve to, and `check_lineage` and the object
    size (`load_pairs`) read the store's dataset."""

    opened: PreparedDataset | None = None

    def dataset(self) -> PreparedDataset:
        return self.opened


def _weights_hash(run: Path) -> str:
    """The hash a feature store records as its `model_hash`: of the DDPM's weights, or of a baseline's
    newest checkpoint."""
    if is_baseline_run(run):
        return sha256_file(load_baseline(run)[2] / WEIGHTS_FILE)
    return model_hash(run)


def _kind(card: Mapping[str, Any]) -> BackboneKind:
    """Cards written before baselines could be exported hold a diffusion backbone."""
    return (card.get("recipe") or {}).get("backbone", "diffusion")


def export_from_store(
    *,
    backbone_run: Path,
    features: Path,
    split: str,
    pairs: Selection | Sequence[str],
    out: Path,
    data: str | Path | None = None,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    loss: Loss = "ce",
    seed: int = 0,
    progress: bool = True,
    object_size: bool = False,
    probe_options: Mapping[str, Any] | None = None,
    transductive: bool = False,
    source: Mapping[str, Any] | None = None,
    ood: OODOption = DEFAULT_OOD_SCORE,
    ood_keep: float = DEFAULT_OOD_KEEP,
) -> Path:
    """Refit the probe on `pairs` of a feature store and export it with calibrated abstention.

    The probe is fitted on the split's train rows (its lr and weight decay selected on val rows by
    `fit_single`), the abstention thresholds are calibrated on the val rows, and the test rows are
    scored once, for the card. `data` is the prepared dataset (default: the one the store names);
    the store must hold features of `backbone_run` on that very dataset, or the card would lie.
    Several pairs are fused (concatenated); `object_size` appends the log object size to each, as
    the probe protocol does. Validation and test rows the backbone trained on are refused
    (`plankdiff.probe.run.check_lineage`) unless the use is declared `transductive`.
    `probe_options`: `fit_probe_grid` options (epochs, min_steps); `source`: recorded in the card
    (where the recipe came from). `ood`: the open-set score (`fit_open_set`: fitted on the train
    rows, cut on the val rows to keep a share `ood_keep`, its kept share on test measured once),
    or "off" for none.
    """
    if not 0 < ood_keep <= 1:
        raise ValueError(f"--ood-keep {ood_keep}: the share of in-distribution images kept must be in (0, 1]")
    store = FeatureStore(Path(features))
    if not (store.root / "store.json").exists():
        raise FileNotFoundError(f"{features}: not a feature store (no store.json)")
    info = store.info
    if not store.complete:
        raise ValueError(
            f"{features}: extraction stopped at {store.rows_done()} of {len(store.rows)} rows; "
            "finish it with `plankdiff features extract` first"
        )
    if info["model_hash"] != _weights_hash(backbone_run):
        raise ValueError(f"{features}: features of another model than {backbone_run} (weights hash differs)")
    dataset = PreparedDataset.open(data if data is not None else info["dataset"])
    if dataset.key != info["dataset_key"]:
        raise ValueError(
            f"{features}: features of another version of dataset {dataset.name} ({dataset.root})"
        )
    store = _StoreOn(store.root, dataset)
    chosen = Split.load(dataset, split)
    empty = [s for s in SPLITS if len(chosen.indices(s)) == 0]
    if empty:
        raise ValueError(f"split {split!r} of {dataset.name} has no {' / '.join(empty)} rows")
    selection = Selection.of(pairs)
    if not is_baseline_run(backbone_run):
        _diffusion_pairs(selection)
    for pair in selection.names:
        if pair not in store.pairs:
            raise ValueError(f"{features}: no pair {pair!r} (it has {', '.join(store.pairs[:4])}, …)")
    lineage = check_lineage(store, chosen, ("val", "test"), transductive=transductive)
    x = {}
    for s in SPLITS:
        by_pair = load_pairs(
            store, selection.names, store.positions(chosen.indices(s)), with_size=object_size
        )
        x[s] = np.concatenate([by_pair[p] for p in selection.names], axis=1)
    y = {s: chosen.labels(s) for s in SPLITS}
    n_train, n_val = len(y["train"]), len(y["val"])
    grid = fit_single(
        np.concatenate([x["train"], x["val"]]),
        np.concatenate([y["train"], y["val"]]),
        train=np.arange(n_train),
        val=np.arange(n_train, n_train + n_val),
        n_classes=len(chosen.classes),
        name=selection.name,
        loss=loss,
        seed=seed,
        progress=progress,
        **dict(probe_options or {}),
    )
    classifier = grid.classifier()
    # Temperature-scale on validation first: the thresholds are then set on calibrated posteriors.
    raw_val, raw_test = classifier.predict_proba(x["val"]), classifier.predict_proba(x["test"])
    temperature = fit_temperature(raw_val, y["val"])
    val_proba, test_proba = apply_temperature(raw_val, temperature), apply_temperature(raw_test, temperature)
    calibration = {
        "temperature": temperature,
        "method": "temperature scaling, NLL on the split's val rows",
        "ece_15_bins": {
            "val_before": expected_calibration_error(raw_val, y["val"]),
            "val_after": expected_calibration_error(val_proba, y["val"]),
            "test_before": expected_calibration_error(raw_test, y["test"]),
            "test_after": expected_calibration_error(test_proba, y["test"]),
        },
    }
    abstention = calibrate_thresholds(
        val_proba,
        y["val"],
        classes=chosen.classes,
        target_precision=target_precision,
    )
    open_set, open_set_arrays = (
        (None, None) if ood == "off" else fit_open_set(classifier, x, y["train"], method=ood, keep=ood_keep)
    )
    scores = classification_metrics(y["test"], test_proba.argmax(axis=1), len(chosen.classes), chosen.classes)
    best = grid.best_per_pair().iloc[0]
    metrics = {
        "split": split,
        "features": {"path": str(store.root.resolve()), "key": info["key"]},
        "lineage": lineage,
        "source": dict(source) if source is not None else {"pairs": selection.names, "loss": loss},
        "probe": grid.hyperparameters(),
        "val": {"accuracy": float(best["val_accuracy"]), "macro_f1": float(best["val_macro_f1"]), "n": n_val},
        "test": {
            **{k: scores[k] for k in ("accuracy", "macro_f1", "balanced_accuracy", "n", "n_classes_present")},
            "ci95": scores["ci"],
            "abstention": selective_scores(test_proba, y["test"], abstention.array(chosen.classes)),
        },
    }
    request = info["request"]
    return export_classifier(
        backbone_run=backbone_run,
        dataset=dataset,
        pairs=selection,
        classifier=classifier,
        thresholds=abstention,
        metrics=metrics,
        out=out,
        classes=chosen.classes,
        # A baseline store's request names its method and blocks, and its orientations only when 8.
        extraction=ExtractionRequest(
            **{key: request[key] for key in ("pooling", "noise_draws") if key in request},
            orientations=request.get("orientations", 1),
        ),
        calibration=calibration,
        validation=(val_proba, y["val"]),
        object_size=object_size,
        open_set=open_set,
        open_set_arrays=open_set_arrays,
    )


def export_from_result(
    result: Path,
    *,
    out: Path,
    backbone_run: Path | None = None,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    transductive: bool = False,
    progress: bool = True,
    ood: OODOption = DEFAULT_OOD_SCORE,
    ood_keep: float = DEFAULT_OOD_KEEP,
) -> Path:
    """Export the probe a probe result folder selected (`results/<study>/metrics/<experiment>/<method>/seedN`
    or `plankdiff probe --out`), with its whole recipe: its feature store (orientations included),
    split, selected pair or fused pairs (`a+b+c`), object size, loss and probe budget.

    `backbone_run`: the run folder the store's features came from (default: the one the store
    records). The probe is refitted on the train rows with the same protocol, so its numbers in
    the card are this export's, not copied from the result.
    """
    result = Path(result)
    selected_file = result / "selected.json"
    if not selected_file.exists():
        raise FileNotFoundError(f"{result}: no selected.json; give a probe result folder (…/metrics/…/seedN)")
    selected = read_json(selected_file)
    if selected.get("protocol", "linear") != "linear":
        raise ValueError(
            f"{selected_file}: a {selected['protocol']} probe; only linear probes can be exported"
        )
    store = FeatureStore(Path(selected["features"]))
    if not (store.root / "store.json").exists():
        raise FileNotFoundError(f"{selected_file}: its feature store {store.root} is gone")
    # Diffusion stores record their run; baseline stores have always recorded it under `baseline`.
    backbone = backbone_run or store.info.get("backbone") or (store.info.get("baseline") or {}).get("run")
    if backbone is None:
        raise ValueError(
            f"{store.root}: the store does not record its backbone run (extracted before it did); give --backbone"
        )
    protocol = (selected.get("config") or {}).get("protocol") or {}
    options = {key: protocol[key] for key in ("epochs", "min_steps") if key in protocol}
    seed = int(result.name[4:]) if result.name.startswith("seed") and result.name[4:].isdigit() else 0
    pairs = Selection.parse(selected["pair"])
    return export_from_store(
        backbone_run=Path(backbone),
        features=store.root,
        split=selected["split"],
        pairs=pairs,
        out=out,
        target_precision=target_precision,
        loss=selected.get("loss") or "ce",
        seed=seed,
        progress=progress,
        object_size=bool(selected.get("with_size", False)),
        probe_options=options,
        transductive=transductive,
        ood=ood,
        ood_keep=ood_keep,
        source={
            "result": str(result.resolve()),
            "pairs": pairs.names,
            "loss": selected.get("loss"),
            "object_size": bool(selected.get("with_size", False)),
            "val_in_result": selected.get("val"),
        },
    )


def _major(version: str) -> str:
    return version.split(".")[0]


def read_card(path: Path) -> dict[str, Any]:
    """The card of an exported classifier, after the version and sha256 checks."""
    path = Path(path)
    card_path = path / CARD_FILE
    if not card_path.exists():
        raise ModelCardError(f"{card_path}: missing; {path} is not an exported plankdiff classifier")
    card = read_json(card_path)
    if card.get("format") != CARD_FORMAT:
        raise ModelCardError(f"{card_path}: format {card.get('format')!r}, expected {CARD_FORMAT!r}")
    written_by = str(card.get("plankdiff_version", "?"))
    if _major(written_by) != _major(__version__):
        raise ModelCardError(
            f"{card_path}: written by plankdiff {written_by}, this is plankdiff {__version__}; features "
            f"and preprocessing may differ across major versions, so re-export with plankdiff {__version__}"
        )
    if card.get("content_sha256") != card_content_hash(card):
        raise ModelCardError(
            f"{card_path}: its classes, thresholds, pairs or preprocessing differ from what was exported "
            "with these weights (content_sha256 does not match"
            + ("" if card.get("content_sha256") else ", or is missing: an older export; re-export it")
            + "); refusing to load it"
        )
    hashes = card.get("sha256", {})
    optional = [QUANTIFY_FILE] if (card.get("quantification") or {}).get("file") == QUANTIFY_FILE else []
    required = BASELINE_HASHED_FILES if _kind(card) == "baseline" else HASHED_FILES
    for name in [*required, *optional]:
        file = path / name
        if name not in hashes:
            raise ModelCardError(f"{card_path}: no sha256 for {name}; the card is incomplete")
        if not file.exists():
            raise ModelCardError(f"{file}: missing (card.json lists it)")
        actual = sha256_file(file)
        if actual != hashes[name]:
            raise ModelCardError(
                f"{file}: sha256 {actual[:16]}… does not match card.json ({hashes[name][:16]}…); "
                "the file changed after export, refusing to load it"
            )
    return card


class DeployedClassifier:
    """Frozen denoiser + feature pairs + linear probe + abstention + open-set cut, as one callable
    classifier.

    Built by `load_classifier`. `predict_proba(pixels, seeds)` takes preprocessed uint8 images
    `[N, C, S, S]` (see `params`) and one noise seed per image (`image_seed`); `assess` also gives
    each image's open-set score, and `decisions` turns both into class names, `unclassified` and
    `unknown`.
    """

    def __init__(
        self,
        *,
        root: Path,
        card: dict,
        unet: UNet2DModel | None,
        scheduler: DDPMScheduler | None,
        probe: LinearClassifier,
        baseline: Method | None = None,
        ood_arrays: Mapping[str, np.ndarray] | None = None,
    ):
        self.root, self.card, self.unet, self.scheduler, self.probe = root, card, unet, scheduler, probe
        self.baseline = baseline  # a baseline's frozen network instead of the denoiser
        self.blocks = [p["block"] for p in card["pairs"]]
        self.pairs = [] if baseline is not None else [Pair(p["block"], p["t"]) for p in card["pairs"]]
        # Cards written before the recipe was recorded had no object size.
        self.object_size = bool((card.get("recipe") or {}).get("object_size", False))
        self.request = _request(self.pairs, card["extraction"]) if baseline is None else None
        abstention = card["abstention"]
        self.abstention = Abstention.from_card(abstention) if abstention is not None else None
        self._thresholds = self.abstention.array(self.classes) if self.abstention is not None else None
        # Cards written before open-set rejection have no `ood`; "off" at export writes None.
        self.open_set = OpenSet.from_card(card["ood"]) if card.get("ood") else None
        self._ood_scorer = (
            _open_set_scorer(self.open_set, probe, ood_arrays or {}, len(self.classes))
            if self.open_set is not None
            else None
        )
        self._extractor: Extractor | None = None

    @property
    def open_set_note(self) -> str | None:
        """Why no image can be `unknown` with this classifier, or None when it has the open-set cut."""
        if self.open_set is not None:
            return None
        why = (
            "was exported before open-set rejection"
            if "ood" not in self.card
            else "was exported with --ood off"
        )
        return f"{self.root}: {why}, so no image is marked {UNKNOWN}; re-export it to reject unknown images"

    @property
    def classes(self) -> list[str]:
        return list(self.card["classes"])

    @property
    def params(self) -> PreprocessParams:
        return PreprocessParams(**self.card["preprocess"])

    @property
    def network(self) -> torch.nn.Module:
        return self.baseline if self.baseline is not None else self.unet

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device: str | torch.device) -> DeployedClassifier:
        if torch.device(device) == self.device:
            return self
        if self._extractor is not None:
            self._extractor.close()  # it holds the old device; rebuilt on next use
            self._extractor = None
        self.network.to(device)
        return self

    @property
    def extractor(self) -> Extractor:
        if self._extractor is None:
            self._extractor = Extractor(self.unet, self.scheduler, request=self.request)
        return self._extractor

    def features(self, pixels: np.ndarray, seeds: np.ndarray, sizes: np.ndarray | None = None) -> np.ndarray:
        """The probe's input [N, D]: every pair's pooled features, concatenated in card order.

        Pairs that share a t come from one forward pass. Values are rounded through float16,
        as the feature store keeps them, so the probe sees what it was trained on. sizes: the
        `log_size_features` [N, 3] of the images, needed (and appended after every pair) when the
        card's recipe has the object size.
        """
        if self.object_size and (sizes is None or len(sizes) != len(pixels)):
            raise ValueError(
                f"{self.root}: this classifier reads the object size; pass one size row per image"
            )
        if not (pixels.ndim == 4 and pixels.dtype == np.uint8):
            raise ValueError(
                f"expected preprocessed uint8 images [N, C, S, S], got {pixels.dtype} {pixels.shape}"
            )
        if len(seeds) != len(pixels):
            raise ValueError(f"{len(seeds)} seeds for {len(pixels)} images")
        # A memory-mapped dataset is read-only; torch wants a writable buffer (copied only then).
        x0 = to_model_range(torch.from_numpy(np.require(pixels, requirements=["C", "W"])))
        if self.baseline is not None:  # a deterministic network: the seeds are not needed
            features, _ = method_features(
                self.baseline, x0.to(self.device), orientations=self.card["extraction"]["orientations"]
            )
            blocks = [features[b].float().cpu().numpy() for b in self.blocks]
        else:
            rows = np.asarray(seeds, dtype=np.int64)
            by_t = {t: self.extractor(x0, rows, t) for t in self.request.timesteps}
            blocks = [by_t[p.t][p.block].numpy() for p in self.pairs]
        parts = []
        for block in blocks:
            parts.append(block.astype(np.float16).astype(np.float32))
            if self.object_size:
                parts.append(np.asarray(sizes, dtype=np.float32))
        return np.concatenate(parts, axis=1)

    def predict_proba(
        self, pixels: np.ndarray, seeds: np.ndarray, sizes: np.ndarray | None = None
    ) -> np.ndarray:
        """Posteriors [N, C], temperature-scaled as calibrated at export (cards without it: T = 1)."""
        return self.assess(pixels, seeds, sizes)[0]

    def assess(
        self, pixels: np.ndarray, seeds: np.ndarray, sizes: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Posteriors [N, C] (as `predict_proba`) and each image's open-set score [N] from the same
        features (None when the classifier has no open-set cut)."""
        x = self.features(pixels, seeds, sizes)
        proba = self.probe.predict_proba(x)
        temperature = float((self.card.get("calibration") or {}).get("temperature", 1.0))
        if temperature != 1.0:
            proba = apply_temperature(proba, temperature).astype(proba.dtype)
        return proba, self.ood_scores(x)

    def ood_scores(self, x: np.ndarray) -> np.ndarray | None:
        """The open-set score of the probe's input features `x` (`features`), None without the cut."""
        if self.open_set is None:
            return None
        return self._ood_scorer.score(x)

    @property
    def has_validation_posteriors(self) -> bool:
        return bool((self.card.get("quantification") or {}).get("file"))

    def validation_posteriors(self, *, needed_for: str) -> tuple[np.ndarray, np.ndarray]:
        """The exported validation posteriors (temperature-scaled) [N, C] and class indices [N]."""
        if not self.has_validation_posteriors:
            raise ModelCardError(
                f"{self.root / CARD_FILE}: exported without validation posteriors, so {needed_for} "
                "cannot be fitted; re-export the classifier"
            )
        saved = load_file(str(self.root / QUANTIFY_FILE))
        return saved["proba"], saved["labels"]

    def quantifier(self, method: str):
        """A QuaPy quantifier (`plankdiff.deploy.quantify`) fitted on the exported validation posteriors."""
        from plankdiff.deploy.quantify import fit_quantifier  # QuaPy loads only when counting

        return fit_quantifier(method, *self.validation_posteriors(needed_for=f"--counts {method}"))

    def decisions(self, proba: np.ndarray, ood_scores: np.ndarray | None = None) -> list[str]:
        """Per row: `unknown` beyond the open-set cut (checked first: a confident posterior on an
        image unlike any training image means nothing), else the top-1 class name, or
        `unclassified` below that class's threshold. Without scores or a cut, nothing is unknown."""
        names = self.classes
        decided = [names[i] if i >= 0 else UNCLASSIFIED for i in decide(proba, self._thresholds)]
        if ood_scores is None or self.open_set is None:
            return decided
        unknown = self.open_set.unknown(ood_scores)
        return [UNKNOWN if far else name for name, far in zip(decided, unknown, strict=True)]


def load_classifier(path: Path | str, *, device: str | torch.device = "cpu") -> DeployedClassifier:
    """Load an exported classifier, refusing one that fails a version, hash or shape check."""
    root = Path(path)
    card = read_card(root)
    arrays = load_file(str(root / PROBE_FILE))
    probe = LinearClassifier.from_arrays(**{k: arrays[k] for k in ("mean", "std", "weight", "bias")})
    ood_arrays = {k: arrays[k] for k in OOD_ARRAY_NAMES if k in arrays}
    if _kind(card) == "baseline":
        return _load_baseline_classifier(root, card, probe, ood_arrays).to(device)
    unet, scheduler = load_backbone(root / UNET_DIR)
    pairs = _diffusion_pairs(Selection.of(p["name"] for p in card["pairs"])).pairs
    dims = _block_dims(unet, scheduler, _request(pairs, card["extraction"]))
    for entry, pair in zip(card["pairs"], pairs, strict=True):
        if dims[pair.block] != entry["dim"]:
            raise ModelCardError(
                f"{root / CARD_FILE}: pair {pair.name} has width {entry['dim']} in the card, "
                f"{dims[pair.block]} in {root / UNET_DIR}"
            )
        alpha_bar = float(scheduler.alphas_cumprod[pair.t])
        if not math.isclose(alpha_bar, entry["alpha_bar"], rel_tol=1e-6):
            raise ModelCardError(
                f"{root / SCHEDULER_DIR}: ᾱ_t at t={pair.t} is {alpha_bar:.6g}, the card says {entry['alpha_bar']:.6g}"
            )
    _check_probe(root, card, probe, dims)
    classifier = _deployed(
        root=root, card=card, unet=unet, scheduler=scheduler, probe=probe, ood_arrays=ood_arrays
    )
    return classifier.to(device)


def _deployed(**parts: Any) -> DeployedClassifier:
    """The classifier, with open-set arrays that do not fit its probe named as the file at fault."""
    try:
        return DeployedClassifier(**parts)
    except (KeyError, ValueError) as error:
        raise ModelCardError(f"{parts['root'] / PROBE_FILE}: open-set score: {error}") from error


def _load_baseline_classifier(
    root: Path, card: dict, probe: LinearClassifier, ood_arrays: Mapping[str, np.ndarray]
) -> DeployedClassifier:
    folder = root / BASELINE_DIR
    method = build_baseline(read_json(folder / BASELINE_FILE), folder / WEIGHTS_FILE)
    dims = {b.name: b.dim for b in method.feature_blocks()}
    for entry in card["pairs"]:
        if dims.get(entry["block"]) != entry["dim"]:
            raise ModelCardError(
                f"{root / CARD_FILE}: block {entry['block']} has width {entry['dim']} in the card, "
                f"{dims.get(entry['block'])} in {folder}"
            )
    _check_probe(root, card, probe, dims)
    return _deployed(
        root=root, card=card, unet=None, scheduler=None, probe=probe, baseline=method, ood_arrays=ood_arrays
    )


def _check_probe(root: Path, card: dict, probe: LinearClassifier, dims: Mapping[str, int]) -> None:
    """The probe must read what the card's blocks (and object size) give, and name its classes."""
    blocks = [p["block"] for p in card["pairs"]]
    size_columns = SIZE_COLUMNS * len(blocks) if (card.get("recipe") or {}).get("object_size") else 0
    total = sum(dims[b] for b in blocks) + size_columns
    if probe.n_features != total:
        raise ModelCardError(
            f"{root / PROBE_FILE}: probe takes {probe.n_features} features, the card's pairs"
            + (" and object size" if size_columns else "")
            + f" give {total}"
        )
    if probe.n_classes != len(card["classes"]):
        raise ModelCardError(
            f"{root / PROBE_FILE}: probe has {probe.n_classes} classes, the card names {len(card['classes'])}"
        )
    abstention = card["abstention"]
    if abstention is not None and set(abstention["thresholds"]) != set(card["classes"]):
        raise ModelCardError(f"{root / CARD_FILE}: abstention thresholds do not name the card's classes")


__all__ = [
    "DeployedClassifier",
    "ModelCardError",
    "UNCLASSIFIED",
    "UNKNOWN",
    "export_classifier",
    "export_from_result",
    "export_from_store",
    "fit_open_set",
    "image_seed",
    "load_classifier",
    "read_card",
]
