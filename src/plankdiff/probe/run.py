"""One evaluation entry point: a feature store + a split in, selected pair and test metrics out.

Selection (pair and probe hyper-parameters) uses validation rows only; the selected probe meets
the test rows once. Shifted test sets (another store and split with the same class list) are
scored with the same probe, and per pair for a heatmap of the drop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pandas as pd

from plankdiff.choices import Loss, Protocol
from plankdiff.data.lineage import check_unseen, log_readout, read_training_images
from plankdiff.data.preprocess import log_size_features
from plankdiff.data.splits import Split
from plankdiff.features.pairs import Selection
from plankdiff.features.store import FeatureStore
from plankdiff.probe.knn import knn_predict
from plankdiff.probe.linear import LinearClassifier, fit_probe_grid, fit_single, train_statistics
from plankdiff.probe.metrics import (
    classification_metrics,
    macro_f1_rows,
    plot_confusion,
    plot_heatmap,
    save_metrics,
)
from plankdiff.probe.selection import best, better, rank
from plankdiff.provenance import atomic_write, git_sha, write_json

PREDICTIONS_FILE = (
    "test_predictions.csv"  # one row per test image of the selected probe (the report reads it)
)


@dataclass
class Shifted:
    """A test set under distribution shift: its own features and split, the same class list."""

    name: str
    store: FeatureStore
    split: Split


@dataclass
class ProbeResult:
    protocol: str
    selected: Selection  # one pair, or the fused top-k
    hyperparameters: dict[str, Any]
    val: dict[str, float]
    test: dict[str, Any]
    table: pd.DataFrame  # validation scores per pair (and hp for the linear protocol)
    shifted: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_pair: pd.DataFrame | None = None  # per-pair test and shifted accuracy (analysis only)
    lineage: str = ""  # whether the scored images were checked against the backbone's training images
    # The selected probe's class probabilities on the test images (dataset rows `test_rows`), as the
    # test metrics were computed from them: misclassified examples and coverage curves read these.
    test_rows: np.ndarray | None = None
    test_proba: np.ndarray | None = None
    # The selected linear probe (None for kNN): open-set scores read its standardisation and logits.
    classifier: LinearClassifier | None = None

    @property
    def selected_pair(self) -> str:
        """The selection's text (`a` or `a+b`), as results, tables and titles write it."""
        return self.selected.name


def split_positions(store: FeatureStore, split: Split) -> dict[str, np.ndarray]:
    return {name: store.positions(split.indices(name)) for name in ("train", "val", "test")}


def _size_columns(store: FeatureStore) -> np.ndarray:
    meta = store.dataset().meta.iloc[store.rows]
    return log_size_features(
        meta["orig_width"].to_numpy(float),
        meta["orig_height"].to_numpy(float),
        meta["object_area"].to_numpy(float),
    )


def load_pairs(
    store: FeatureStore, pairs: list[str], positions: np.ndarray, *, with_size: bool
) -> dict[str, np.ndarray]:
    extra = _size_columns(store)[positions] if with_size else None
    out = {}
    for pair in pairs:
        x = np.asarray(store.load(pair)[positions], dtype=np.float32)
        out[pair] = np.concatenate([x, extra], axis=1) if extra is not None else x
    return out


def selected_features(
    store: FeatureStore, selection: Selection, rows: np.ndarray, *, with_size: bool
) -> np.ndarray:
    """The features a selected probe reads for dataset `rows` of `store`: its pairs concatenated in
    the selection's order (with the object size after each where the protocol adds it)."""
    by_pair = load_pairs(store, selection.names, store.positions(rows), with_size=with_size)
    return np.concatenate([by_pair[p] for p in selection.names], axis=1)


def _pair_axes(store: FeatureStore) -> dict[str, tuple[str, int | None]]:
    return {p["name"]: (p["block"], p.get("t")) for p in store.pair_table()}


def probe_features(
    store: FeatureStore,
    split: Split,
    *,
    protocol: Protocol = "linear",
    loss: Loss | Sequence[Loss] = "ce",
    pairs: list[str] | None = None,
    with_size: bool = False,
    fuse_top: int = 1,
    shifted: list[Shifted] = (),
    seed: int = 0,
    bootstrap: int = 1000,
    out: Path | None = None,
    config: dict | None = None,
    probe_options: dict | None = None,
    transductive: bool = False,
) -> ProbeResult:
    """`transductive`: the backbone deliberately saw the scored images (unlabelled) in pre-training;
    without it, scoring any validation or test image the backbone trained on is refused."""
    if protocol not in get_args(Protocol):  # any other value used to run kNN under its own name
        raise ValueError(f"protocol must be one of {', '.join(get_args(Protocol))}, not {protocol!r}")
    lineage = check_lineage(store, split, ("val", "test"), transductive=transductive)
    for shift in shifted:
        check_lineage(shift.store, shift.split, ("test",), transductive=transductive)
    pairs = pairs or store.pairs
    positions = split_positions(store, split)
    order = np.concatenate([positions["train"], positions["val"], positions["test"]])
    n_train, n_val = len(positions["train"]), len(positions["val"])
    index = {
        "train": np.arange(n_train),
        "val": np.arange(n_train, n_train + n_val),
        "test": np.arange(n_train + n_val, len(order)),
    }
    labels = split.targets[store.rows[order]]
    if (labels < 0).any():
        raise ValueError(f"split {split.name!r}: rows without a target; was it made on this dataset?")
    empty = [name for name in ("train", "val", "test") if not len(positions[name])]
    if empty:  # selection needs validation rows and the report test rows: no number without them
        raise ValueError(f"split {split.name!r}: no {' and no '.join(empty)} rows; nothing to probe on")
    n_classes = len(split.classes)
    features = load_pairs(store, pairs, order, with_size=with_size)

    if protocol == "linear":
        losses = (loss,) if isinstance(loss, str) else tuple(loss)
        fits = [
            _fit_linear(
                features,
                labels,
                index,
                n_classes,
                pairs=pairs,
                loss=one,
                fuse_top=fuse_top,
                seed=seed,
                probe_options=probe_options,
            )
            for one in losses
        ]
        # The loss is a hyper-parameter like the others: the fit that wins on validation is kept.
        chosen = fits[0]
        for fit in fits[1:]:
            if better(fit.scores, chosen.scores):
                chosen = fit
        table = pd.concat([f.table for f in fits], ignore_index=True)
        table = table[table["loss"] == chosen.loss] if len(fits) > 1 else table
        selected, hyper, loss = chosen.selected, chosen.hyper, chosen.loss
        models = chosen.models
        classifiers = {p: model.predict_proba for p, model in models.items()}
    else:
        rows = []
        classifiers, models = {}, {}
        for pair in pairs:
            x = features[pair]
            predict = _knn_predictor(x[index["train"]], labels[index["train"]], n_classes)
            val_pred = predict(x[index["val"]]).argmax(1)
            rows.append(
                {
                    "pair": pair,
                    "val_macro_f1": float(macro_f1_rows(labels[index["val"]], val_pred[None], n_classes)[0]),
                    "val_accuracy": float((val_pred == labels[index["val"]]).mean()),
                }
            )
            classifiers[pair] = predict
        table = pd.DataFrame(rows)
        top = best(table)
        selected, hyper = Selection.parse(top["pair"]), {"pair": top["pair"], "k": 20, "temperature": 0.07}

    scores = best(table[table["pair"] == selected.name])
    val = {"macro_f1": float(scores["val_macro_f1"]), "accuracy": float(scores["val_accuracy"])}
    x_selected = features[selected.name]
    test_proba = np.asarray(classifiers[selected.name](x_selected[index["test"]]))
    test_pred = test_proba.argmax(1)
    test = classification_metrics(
        labels[index["test"]], test_pred, n_classes, split.classes, bootstrap=bootstrap, seed=seed
    )

    log_readout(
        store.dataset(),
        split.name,
        {"features": str(store.root), "pair": selected.name, "protocol": protocol},
    )
    result = ProbeResult(
        protocol,
        selected,
        hyper,
        val,
        test,
        table,
        lineage=lineage,
        test_rows=store.rows[positions["test"]],
        test_proba=test_proba,
        classifier=models.get(selected.name),
    )
    if shifted:
        result.shifted, result.per_pair = _score_shifted(
            shifted,
            pairs=pairs,
            selected=selected,
            classifiers=classifiers,
            test_features={p: x[index["test"]] for p, x in features.items()},
            test_labels=labels[index["test"]],
            classes=split.classes,
            with_size=with_size,
            bootstrap=bootstrap,
            seed=seed,
        )
    if out is not None:
        write_result(result, store, split, out, config=config or {}, with_size=with_size, loss=loss)
    return result


@dataclass
class _LinearFit:
    loss: str
    selected: Selection
    hyper: dict[str, Any]
    table: pd.DataFrame
    models: dict[str, LinearClassifier]
    scores: pd.Series  # the selected probe's validation scores


def _fit_linear(
    features, labels, index, n_classes, *, pairs, loss, fuse_top, seed, probe_options
) -> _LinearFit:
    """Every pair's probe grid with one loss, and the top-`fuse_top` pairs fused when that wins."""
    options = probe_options or {}
    grid = fit_probe_grid(
        features,
        labels,
        train=index["train"],
        val=index["val"],
        n_classes=n_classes,
        loss=loss,
        seed=seed,
        **options,
    )
    table, selected, hyper = grid.table, Selection.parse(grid.best_pair), grid.hyperparameters()
    models = {p: grid.classifier(p) for p in pairs}
    ranked = rank(grid.best_per_pair())
    if fuse_top > 1:
        top = Selection.of(ranked["pair"].head(fuse_top))
        # The fused features and probe go by the selection's text, beside the single pairs' own.
        fused_name = top.name
        features[fused_name] = np.concatenate([features[p] for p in top.names], axis=1)
        fused = fit_single(
            features[fused_name],
            labels,
            train=index["train"],
            val=index["val"],
            n_classes=n_classes,
            name=fused_name,
            loss=loss,
            seed=seed,
            **options,
        )
        table = pd.concat([table, fused.table], ignore_index=True)
        models[fused_name] = fused.classifier()
        if better(fused.best_per_pair().iloc[0], ranked.iloc[0]):
            selected, hyper = top, fused.hyperparameters()
    table = table.assign(loss=loss)
    return _LinearFit(
        loss,
        selected,
        hyper | {"loss": loss},
        table,
        models,
        best(table[table["pair"] == selected.name]),
    )


def check_lineage(store: FeatureStore, split: Split, parts, *, transductive: bool) -> str:
    """Refuse (`LeakError`) when the store's backbone trained on any of the split's `parts`; say how
    the check went, for the result's record."""
    trained = read_training_images(store.root)
    if trained is None:
        return "unknown: the backbone recorded no training images"
    dataset = store.dataset()
    for part in parts:
        check_unseen(
            trained,
            dataset,
            split.indices(part),
            backbone=f"features {store.root}",
            split=split.name,
            part=part,
            transductive=transductive,
        )
    return "transductive: the backbone saw these images unlabelled" if transductive else "checked: unseen"


def _knn_predictor(train_x: np.ndarray, train_y: np.ndarray, n_classes: int):
    return lambda query: knn_predict(train_x, train_y, query, n_classes)


def _score_shifted(
    shifted,
    *,
    pairs,
    selected,
    classifiers,
    test_features,
    test_labels,
    classes,
    with_size,
    bootstrap,
    seed,
):
    """The selected probe on each shifted test set, and every pair's accuracy drop (analysis only)."""
    results, per_pair = {}, []
    in_test = {p: float((classifiers[p](test_features[p]).argmax(1) == test_labels).mean()) for p in pairs}
    n_classes = len(classes)
    for shift in shifted:
        # The probe's outputs are class indices of the probe's split: a shifted set is scored only
        # when it names the same classes, and its labels are mapped by name, never by position.
        if set(shift.split.classes) != set(classes):
            unknown = sorted(set(shift.split.classes) - set(classes))
            missing = sorted(set(classes) - set(shift.split.classes))
            raise ValueError(
                f"shifted set {shift.name}: its classes differ from the probe's "
                f"(not in the probe: {unknown[:5] or 'none'}; not in the shifted set: {missing[:5] or 'none'})"
            )
        to_probe = np.array([classes.index(c) for c in shift.split.classes], dtype=np.int64)
        test_positions = shift.store.positions(shift.split.indices("test"))
        shift_labels = to_probe[shift.split.targets[shift.store.rows[test_positions]]]
        shift_features = load_pairs(
            shift.store, [p for p in pairs if p in shift.store.pairs], test_positions, with_size=with_size
        )
        x_sel = np.concatenate([shift_features[p] for p in selected.names], axis=1)
        predicted = classifiers[selected.name](x_sel).argmax(1)
        log_readout(
            shift.store.dataset(),
            shift.split.name,
            {"features": str(shift.store.root), "pair": selected.name, "shifted": True},
        )
        results[shift.name] = classification_metrics(
            shift_labels, predicted, n_classes, classes, bootstrap=bootstrap, seed=seed
        )
        for pair, x in shift_features.items():
            accuracy = float((classifiers[pair](x).argmax(1) == shift_labels).mean())
            per_pair.append(
                {
                    "pair": pair,
                    "shift": shift.name,
                    "test_accuracy": in_test[pair],
                    "shifted_accuracy": accuracy,
                    "drop": in_test[pair] - accuracy,
                }
            )
    return results, pd.DataFrame(per_pair)


def _scalars(metrics: dict) -> dict:
    keep = ("accuracy", "macro_f1", "balanced_accuracy", "n", "n_classes_present", "ci")
    return {k: metrics[k] for k in keep if k in metrics}


def _write_predictions(result: ProbeResult, split: Split, path: Path) -> None:
    """`row` (dataset row), `true` and `predicted` class names, `probability` (the top-1 probability:
    softmax of the linear probe, neighbour vote share of kNN), one line per test image."""
    proba, rows = result.test_proba, result.test_rows
    predicted = proba.argmax(axis=1)
    frame = pd.DataFrame(
        {
            "row": rows,
            "true": [split.classes[c] for c in split.targets[rows]],
            "predicted": [split.classes[c] for c in predicted],
            "probability": proba[np.arange(len(proba)), predicted].astype(np.float64),
        }
    )
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def write_result(
    result: ProbeResult,
    store: FeatureStore,
    split: Split,
    out: Path,
    *,
    config: dict,
    with_size: bool,
    loss: str,
) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    extra = {
        "protocol": result.protocol,
        "selected_pair": result.selected_pair,
        "hyperparameters": result.hyperparameters,
        "loss": loss,
        "with_size": with_size,
        "lineage": result.lineage,
        "val": result.val,
        "features": str(store.root),
        "feature_key": store.info.get("key"),
        "split": split.name,
        "git_sha": git_sha(),
        "config": config,
        "shifted": {name: _scalars(m) for name, m in result.shifted.items()},
    }
    save_metrics(result.test, out, extra=extra)
    if result.test_proba is not None:
        _write_predictions(result, split, out / PREDICTIONS_FILE)
    result.table.to_csv(out / "val_grid.csv", index=False)
    if result.per_pair is not None and len(result.per_pair):
        result.per_pair.to_csv(out / "shift_per_pair.csv", index=False)
    axes = _pair_axes(store)
    per_pair = rank(result.table).groupby("pair", sort=False).head(1).set_index("pair")["val_macro_f1"]
    grid_pairs = [p for p in store.pair_table() if p["name"] in per_pair.index and p.get("t") is not None]
    if len(grid_pairs) > 1:
        heat = pd.DataFrame(
            {
                "block": [p["block"] for p in grid_pairs],
                "t": [p["t"] for p in grid_pairs],
                "value": [per_pair[p["name"]] for p in grid_pairs],
            }
        )
        marked = axes.get(result.selected_pair)
        plot_heatmap(
            heat,
            selected=marked,
            out=out / "heatmap_val_macro_f1.png",
            title=f"validation macro-F1, {split.name} ({result.protocol})",
        )
        if result.per_pair is not None and len(result.per_pair):
            for shift, frame in result.per_pair.groupby("shift"):
                drop = pd.DataFrame(
                    {
                        "block": [axes[p][0] for p in frame["pair"]],
                        "t": [axes[p][1] for p in frame["pair"]],
                        "value": frame["drop"].to_numpy(),
                    }
                )
                plot_heatmap(
                    drop,
                    selected=marked,
                    out=out / f"heatmap_drop_{shift}.png",
                    title=f"accuracy drop under shift: {shift}",
                )
    plot_confusion(
        result.test["confusion"],
        split.classes,
        out / "confusion.png",
        title=f"{result.selected_pair} on test",
    )
    write_json(out / "selected.json", {"pair": result.selected_pair, **extra})


__all__ = [
    "ProbeResult",
    "Shifted",
    "load_pairs",
    "probe_features",
    "selected_features",
    "split_positions",
    "train_statistics",
]
