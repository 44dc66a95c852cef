"""A study's results folder from plain data: the headline rows (mean ± std over replicates), the
tables and figures, `study.json`, then the markdown tables and the HTML report.

The runner (`plankdiff.study.runner`) hands over what its stages recorded: per-seed probe
summaries, label-efficiency, k-means, processing-shift and open-set rows, each backbone's run
folder and budget record, and the prepared datasets. Nothing here runs a stage.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from plankdiff.data.info import contact_sheet
from plankdiff.data.lineage import readouts
from plankdiff.data.prepare import PreparedDataset
from plankdiff.data.splits import Split
from plankdiff.evaluation.label_efficiency import plot_label_efficiency
from plankdiff.features.pairs import Selection
from plankdiff.features.store import FeatureStore
from plankdiff.probe.run import load_pairs
from plankdiff.provenance import git_sha, read_json, write_json
from plankdiff.report.evaluations import OPEN_SET_TABLE, PROCESSING_SHIFT_TABLE, QUANTIFICATION_TABLE
from plankdiff.report.render import DIFFUSION, TRAINING_DIR, render_report
from plankdiff.report.tables import write_tables

if TYPE_CHECKING:
    from plankdiff.study.config import ExperimentConfig

Runs = Mapping[int, Mapping[str, Mapping[str, Path]]]  # seed → pretrain key → method → run folder


@dataclass(frozen=True, kw_only=True)
class HeadlineExperiment:
    """The experiment label efficiency, k-means, the own head and the t-SNE figure are read on."""

    name: str
    slug: str  # its folder under metrics/
    dataset: str


@dataclass(frozen=True, kw_only=True)
class StudyRows:
    """What the evaluation stages recorded, one dict per (seed, experiment, method, ...)."""

    per_seed: list[dict]  # probe summaries (and the supervised network's own head)
    efficiency: list[dict]
    kmeans: list[dict]
    shift: list[dict]
    open_set: list[dict]
    quantification: list[dict] = field(
        default_factory=list
    )  # per (seed, experiment, method, counting, capture day)


def what_varies(vary_partition: bool) -> str:
    parts = ["backbone seed", "probe seed"] + (["partition"] if vary_partition else [])
    return ", ".join(parts)


def aggregate(experiment, setting, method, pair, metric, values, varies) -> dict:
    return {
        "experiment": experiment,
        "setting": setting,
        "method": method,
        "pair": pair,
        "metric": metric,
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
        "n_seeds": len(values),
        "varies": varies,
    }


def headline_rows(rows: StudyRows, *, varies: str, headline_dataset: str | None) -> list[dict]:
    """Mean ± std over replicates of every (experiment, setting, method, metric)."""
    out: list[dict] = []
    frame = pd.DataFrame(rows.per_seed)
    for (experiment, method), group in frame.groupby(["experiment", "method"], sort=False):
        group = group.sort_values("seed")
        pairs = ", ".join(sorted(set(group["pair"])))
        shifted = "shift" in group and group["shift"].notna().all()
        setting_in = "in period / source" if shifted else "in distribution"
        for metric in ("accuracy", "macro_f1"):
            values = [t[metric] for t in group["test"]]
            out.append(aggregate(experiment, setting_in, method, pairs, metric, values, varies))
            if shifted:
                moved = [s[metric] for s in group["shift"]]
                out.append(aggregate(experiment, "under shift", method, pairs, metric, moved, varies))
                drops = [a - b for a, b in zip(values, moved, strict=True)]
                out.append(aggregate(experiment, "drop", method, pairs, f"drop_{metric}", drops, varies))
    if rows.efficiency:
        efficiency = pd.DataFrame(rows.efficiency)
        for (method, fraction), group in efficiency.groupby(["method", "fraction"]):
            out.append(
                aggregate(
                    f"{headline_dataset}/label efficiency",
                    f"{fraction:.0%} of train labels",
                    method,
                    "",
                    "accuracy",
                    list(group["accuracy"]),
                    varies,
                )
            )
    if rows.kmeans:
        clusters = pd.DataFrame(rows.kmeans)
        for method, group in clusters.groupby("method", sort=False):
            for metric in ("nmi", "ari", "hungarian_accuracy", "purity"):
                out.append(
                    aggregate(
                        f"{headline_dataset}/k-means (K = classes)",
                        "test images, pair selected by the probe on validation",
                        method,
                        ", ".join(sorted(set(group["pair"]))),
                        metric,
                        list(group[metric]),
                        varies + ", k-means initialisation",
                    )
                )
    return out


def test_readouts(datasets: Mapping[str, PreparedDataset], scored: Iterable[tuple[str, str]]) -> list[dict]:
    """How often each scored split's test rows have been read, over every run that scored them;
    `scored`: (dataset, split name) in the order the study scored them, repeats allowed."""
    seen, out = set(), []
    for dataset, split in scored:
        if (dataset, split) in seen:
            continue
        seen.add((dataset, split))
        out.append({"dataset": dataset, "split": split, "readouts": readouts(datasets[dataset], split)})
    return out


def partial_note(seeds: list[int], completed: list[int]) -> list[str]:
    if len(completed) == len(seeds):
        return []
    done = ", ".join(str(s) for s in completed)
    return [
        f"Partial study: seeds {done} of {len(seeds)} planned are complete; "
        "rerun the same command to resume the rest."
    ]


def study_notes(config: ExperimentConfig, methods: list[str]) -> list[str]:
    varies = what_varies(config.vary_partition)
    notes = [
        f"Each seed is a replicate: {varies} vary across seeds; ± is the standard deviation over "
        "replicates. Every backbone recorded the images it trained on, and no probe scored one of them.",
        "Every choice (pair, timestep, probe loss, learning rate, weight decay, fusion) is made on validation "
        "macro-F1 (then accuracy, then name); test rows are read once per replicate, for the selected probe.",
        "Every method's features go through the same protocol: "
        + ", ".join(f"{k} {v}" for k, v in config.protocol.model_dump(mode="json").items())
        + ".",
        "Under shift, the probe selected in distribution is applied unchanged to the shifted test set.",
        "k-means clusters the test images in the features each method's probe selected on validation.",
    ]
    evaluations = config.evaluations
    if evaluations.processing_shift is not None:
        notes.append(
            "Processing shift: shifted copies of the test images, built from the raw files and prepared like "
            "the clean set; only the selected pairs' features are extracted from them. Each method's probe is "
            "refitted with the same seed, rows and protocol (so the same selection on clean validation) and "
            "applied to the clean test rows (a second readout of the same numbers) and to each shift."
        )
    if evaluations.open_set is not None:
        spec = evaluations.open_set
        notes.append(
            f"Open set: every {spec.hold_out_every}th class name (sorted) is held out of the probe, a rule fixed "
            "before any result; the probe is fitted and selected on the other classes' train and validation "
            f"rows, and each out-of-distribution score's cut keeps {spec.keep:.0%} of their validation images. "
            "Test: share of held-out-class images rejected, of known-class images kept, and AUROC."
        )
    if evaluations.quantification is not None:
        notes.append(
            "Quantification: each method's probe as selected on validation, its posteriors temperature-scaled "
            "on validation, counted by classify and count (CC), probabilistic CC (PCC), adjusted PCC (PACC) and "
            "EM prior adjustment (EMQ) fitted on the validation posteriors, on every image of the shifted target "
            "(no per-class cap), per UTC capture day and pooled; images of classes the probe does not know are "
            f"counted apart. Per-day medians are over days with {evaluations.quantification.min_images}+ images "
            "of the probe's classes."
        )
    if "ndsb-pwssc" in config.experiments:
        notes.append(
            "Without polarity normalisation, NDSB and PWSSC are prepared as recorded and read by the same "
            "backbone, which was trained on polarity-normalised NDSB."
        )
    if config.label_fractions and "supervised" in methods:
        notes.append(
            "Label efficiency: only the linear probe sees the reduced share of labels. The supervised backbone "
            "was pre-trained on every training label, so its rows are a reference, not a few-label result."
        )
    return notes


def versions() -> dict[str, str]:
    """The versions the numbers were made with: Python and the packages that compute them."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("plankdiff", "torch", "diffusers", "lightly", "scikit-learn", "numpy", "pandas"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def embedding_figure(results: Path, headline: HeadlineExperiment | None, seed: int, out: Path) -> None:
    """t-SNE of the diffusion features the headline experiment's probe selected for `seed`."""
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE

    if headline is None:
        return
    record = results / "metrics" / headline.slug / DIFFUSION / f"seed{seed}" / "selected.json"
    if not record.exists():
        return
    selected = read_json(record)
    store = FeatureStore(Path(selected["features"]))
    split = Split.load(PreparedDataset.open(store.info["dataset"]), selected["split"])
    test = split.indices("test")[:2000]
    x = np.concatenate(
        list(
            load_pairs(
                store, Selection.parse(selected["pair"]).names, store.positions(test), with_size=False
            ).values()
        ),
        axis=1,
    )
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)
    if len(test) < 4:  # t-SNE needs a few points per neighbourhood; nothing to show on fewer
        return
    # Perplexity 30 (sklearn's default) needs more than 30 points; a small collection of one's own
    # gets the largest that keeps 3 points per neighbourhood.
    perplexity = min(30.0, (len(test) - 1) / 3)
    points = TSNE(n_components=2, init="pca", random_state=0, perplexity=perplexity).fit_transform(x)
    fig = Figure(figsize=(7, 6))
    ax = fig.add_subplot()
    ax.scatter(points[:, 0], points[:, 1], c=split.targets[test], cmap="tab20", s=4)
    ax.set_title(f"t-SNE of {selected['pair']} ({headline.name} test, {len(test)} images)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.savefig(out, dpi=120, bbox_inches="tight")


def write_study_report(
    results: Path,
    *,
    config: ExperimentConfig,
    started: datetime,
    runs: Runs,
    trained: Mapping[tuple[int, str, str], dict | None],
    datasets: Mapping[str, PreparedDataset],
    methods: list[str],
    headline: HeadlineExperiment | None,
    rows: StudyRows,
    experiments: Mapping[str, str],
    scored: Iterable[tuple[str, str]],
    seeds_completed: list[int],
    ablations: Mapping[str, str] | None = None,
    pretrained_on: Mapping[str, str] | None = None,
) -> Path:
    """`trained`: (seed, pretrain key, method) → the pre-training stage's record (minutes, steps,
    ...); `experiments`: name → folder under metrics/; `pretrained_on`: name → the pre-training
    set whose backbones it reads (a key of `budgets`' methods); `scored`: the (dataset, split) pairs whose
    test rows the study read. Returns the HTML report."""
    figures = results / "figures"
    tables = results / "tables"
    figures.mkdir(parents=True, exist_ok=True)
    tables.mkdir(parents=True, exist_ok=True)
    captions = {}
    budgets = []
    for seed, by_key in runs.items():
        for key, by_method in by_key.items():
            for method in by_method:
                result = trained.get((seed, key, method)) or {}
                # The report draws every backbone's loss curve; run folders live under the
                # work dir, so the results folder gets a copy of each (small) training log.
                log = by_method[method] / "metrics.jsonl"
                if log.exists():
                    copy = results / TRAINING_DIR / key / method / f"seed{seed}.jsonl"
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    copy.write_bytes(log.read_bytes())
                budgets.append(
                    {
                        "method": f"{method} ({key})",
                        "seed": seed,
                        "minutes": result.get("minutes"),
                        "tflops": result.get("tflops"),
                        "steps": result.get("steps"),
                        "images_seen": result.get("images_seen"),
                        "parameters": result.get("parameters"),
                        "precision": result.get("precision"),
                        "stopped_by": result.get("stopped_by"),
                    }
                )
            sample = by_method[DIFFUSION] / "samples" / "final.png"
            if seed == config.seeds[0] and sample.exists():
                target = figures / f"samples_{key}.png"
                target.write_bytes(sample.read_bytes())
                captions[target.name] = (
                    f"DDIM samples of the DDPM pre-trained on {key} (25 steps, EMA weights)"
                )
    first = config.seeds[0]
    for metrics_dir in sorted((results / "metrics").glob(f"*/{DIFFUSION}/seed{first}")):
        for png in metrics_dir.glob("*.png"):
            target = figures / f"{metrics_dir.parent.parent.name}_{png.name}"
            target.write_bytes(png.read_bytes())
            captions[target.name] = (
                f"{metrics_dir.parent.parent.name}, diffusion, seed {first}: {png.stem.replace('_', ' ')}"
            )
    for name, dataset in datasets.items():
        contact_sheet(dataset, figures / f"contact_{name}.png", per_class=6, cell=32)
        captions[f"contact_{name}.png"] = (
            f"{name}: six random prepared images per class (as the backbones see them), "
            "with the class's image count"
        )
    headline_name = headline.name if headline else ""
    embedding_figure(results, headline, first, figures / "embedding.png")
    captions["embedding.png"] = (
        f"t-SNE of the selected diffusion features, {headline_name} test images, coloured by class"
    )
    if rows.efficiency:
        efficiency = pd.DataFrame(rows.efficiency)
        efficiency.to_csv(tables / "label_efficiency.csv", index=False)
        plot_label_efficiency(efficiency, figures / "label_efficiency.png")
        captions["label_efficiency.png"] = (
            f"{headline_name}: test accuracy against the fraction of labelled training images"
        )
    if rows.kmeans:
        pd.DataFrame(rows.kmeans).to_csv(tables / "kmeans.csv", index=False)
    if rows.shift:
        pd.DataFrame(rows.shift).to_csv(tables / PROCESSING_SHIFT_TABLE, index=False)
    if rows.open_set:
        pd.DataFrame(rows.open_set).to_csv(tables / OPEN_SET_TABLE, index=False)
    if rows.quantification:
        pd.DataFrame(rows.quantification).to_csv(tables / QUANTIFICATION_TABLE, index=False)
    write_json(figures / "captions.json", captions)
    varies = what_varies(config.vary_partition)
    headline_dataset = headline.dataset if headline else None
    pd.DataFrame(headline_rows(rows, varies=varies, headline_dataset=headline_dataset)).to_csv(
        results / "headline.csv", index=False
    )
    write_json(
        results / "study.json",
        {
            "name": config.name,
            "description": config.description,
            "git_sha": git_sha(),
            "started": started.isoformat(),
            "finished": datetime.now(timezone.utc).isoformat(),
            "versions": versions(),
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor(),
                "cpus": os.cpu_count(),
            },
            "config": config.model_dump(mode="json"),
            "datasets": {
                k: {"images": len(d), "classes": len(d.classes), "source": d.info["source"]}
                for k, d in datasets.items()
            },
            "budgets": budgets,
            "seeds": list(config.seeds),
            "seeds_completed": list(seeds_completed),
            # experiment → its folder under metrics/ (the report reads per-class files there)
            "experiments": dict(experiments),
            # experiment → the pre-training set of its backbones, so that a reader can join an
            # experiment's figures to the training FLOPs of its own backbones (`report.scaling`)
            "pretrained_on": dict(pretrained_on or {}),
            # ablated experiment → the experiment it repeats (`report.evaluations.ablation_table`)
            "ablations": dict(ablations or {}),
            "varies": varies,
            "test_readouts": test_readouts(datasets, scored),
            "notes": study_notes(config, methods) + partial_note(list(config.seeds), list(seeds_completed)),
        },
    )
    write_tables(results)
    return render_report(results)


__all__ = [
    "HeadlineExperiment",
    "StudyRows",
    "headline_rows",
    "partial_note",
    "study_notes",
    "what_varies",
    "write_study_report",
]
