"""One self-contained `report.html` per study, built from Jinja2 templates (`report/templates/`).

Reading order (issue #17): what the budgets mean for the numbers; 1. what was found, in words and
one figure per experiment; 2. tables with methods as columns; 3. per-class scores and confusions of
each method's selected probe; 4. images (classes, misclassified test images, DDPM samples),
training-loss curves, accuracy against coverage, and what the study did not record; 5. provenance.

The file travels alone (mail, chat, an archive), so nothing is loaded from outside it: figures are
embedded as base64 data URIs, the style sheet is inline and there is no JavaScript. Jinja2's
autoescaping turns every string from the results folder (method and class names, file names, config
values, notes) into text: a results folder is data, and data must never become markup.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from plankdiff.provenance import atomic_write
from plankdiff.report.classes import (
    ConfusionTable,
    confused_pairs,
    confusion_table,
    read_confusion,
    read_per_class,
)
from plankdiff.report.evaluations import evaluation_views
from plankdiff.report.figures import coverage_figure, experiment_figure, loss_figure, read_loss_log
from plankdiff.report.predictions import (
    PREDICTIONS_FILE,
    TARGET_ACCURACY,
    accuracy_coverage,
    feature_dataset,
    mistakes,
    reach,
    read_predictions,
    thumbnail,
)
from plankdiff.report.tables import METRICS, format_score, read_headline

SECTIONS = {
    "found": "1. What was found",
    "tables": "2. Results tables",
    "classes": "3. Per-class results",
    "images": "4. Images and training",
    "provenance": "5. Provenance",
}
TRAINING_DIR = "training"  # results/<study>/training/<pretrain key>/<method>/seed<k>.jsonl (`Study._report`)
DIFFUSION = "diffusion"  # the study's method name for the DDPM probe (`study.runner.DIFFUSION`)


def _uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _duration(started: Any, finished: Any) -> str:
    """'2 h 05 min' between two ISO timestamps, or '' when either is missing or unreadable."""
    try:
        seconds = (
            datetime.fromisoformat(str(finished)) - datetime.fromisoformat(str(started))
        ).total_seconds()
    except (TypeError, ValueError):
        return ""
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _count(value: Any) -> str:
    """Thousands separators for counts; '–' for a missing value; anything else as text."""
    if value is None:
        return "–"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _number(value: Any, digits: int) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, int | float) else "–"


def _plain(value: Any) -> str:
    """Nested machine facts (GPU lists, versions) as compact JSON; scalars as themselves."""
    return json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)


# -- the first lines: what the budgets mean --------------------------------------------------------
def _meaning(study: dict[str, Any], headline: pd.DataFrame) -> list[str]:
    """What the numbers can and cannot say, from the experiment's own `note` and description, then
    facts read from the study (replicates, budgets, caps): nothing here is a judgement made up by
    the report."""
    config = study.get("config") or {}
    lines = [str(text) for text in (config.get("note"), study.get("description")) if text]
    seeds = study.get("seeds") or config.get("seeds") or []
    n_max = int(headline["n_seeds"].max()) if len(headline) else 0
    if len(seeds) == 1 or n_max == 1:
        lines.append(
            "One replicate: the numbers carry no spread (no ±), so no difference between methods is "
            "established by this study."
        )
    elif seeds:
        lines.append(
            f"{len(seeds)} replicates; ± is one standard deviation over them. A difference smaller than "
            "the spread is not established."
        )
    budgets = study.get("budgets") or []
    spent = {}
    for budget in budgets:
        method = str(budget.get("method", "–")).split(" (")[0]
        for key in ("minutes", "tflops", "steps"):
            value = budget.get(key)
            if isinstance(value, int | float):
                spent.setdefault(method, {}).setdefault(key, []).append(value)
    if spent:
        parts = []
        for method, values in spent.items():
            bits = []
            if "minutes" in values:
                bits.append(f"{max(values['minutes']):.2g} min")
            if "tflops" in values:
                bits.append(f"{max(values['tflops']):.2g} TFLOP")
            if "steps" in values:
                bits.append(f"{max(values['steps']):,} steps")
            parts.append(f"{method} {', '.join(bits)}")
        lines.append(
            "Training budget spent per backbone (largest over replicates): " + "; ".join(parts) + "."
        )
    lines += _short_of_flops(config, budgets)
    caps = config.get("caps")
    if isinstance(caps, dict) and caps:
        lines.append(
            "Splits capped at "
            + "/".join(str(caps.get(k, "–")) for k in ("train", "val", "test"))
            + " images per class (train/val/test)."
        )
    return lines


# -- 1 and 2: experiments ---------------------------------------------------------------------------
@dataclass
class ExperimentView:
    name: str
    slug: str
    sentences: list[str]
    figure: str
    columns: list[dict[str, str]]  # {"method", "title"}
    rows: list[dict[str, Any]]  # {"label", "cells": [{"text", "title"}]}
    pairs: list[tuple[str, str]]  # (method, selected feature pair), for the footnote
    figures: list[dict[str, str]] = field(default_factory=list)  # copied study figures of this experiment
    classes: ClassesView | None = None
    predictions: PredictionsView | None = None


def _label(metric: str) -> str:
    return METRICS.get(metric, (metric, False))[0]


def _experiment(frame: pd.DataFrame, name: str, slug: str) -> ExperimentView:
    rows = frame[frame["experiment"] == name]
    methods = list(dict.fromkeys(rows["method"]))
    settings = list(dict.fromkeys(rows["setting"]))
    metrics = [m for m in METRICS if m in set(rows["metric"])]
    metrics += sorted(set(rows["metric"]) - set(metrics))
    varies = rows["varies"].iloc[0] if "varies" in rows and len(rows) else ""
    sentences = []
    for setting in settings:
        at = rows[rows["setting"] == setting]
        metric = next(m for m in metrics if m in set(at["metric"]))
        ranked = at[at["metric"] == metric].sort_values("mean", ascending=False, kind="stable")
        listed = ", ".join(
            f"{r.method} {format_score(metric, r.mean, r.std)}" for r in ranked.itertuples(index=False)
        )
        where = f"{setting}, " if len(settings) > 1 else ""
        sentences.append(f"{where}{_label(metric)}, best first: {listed}.")
    table_rows = []
    for setting in settings:
        for metric in metrics:
            at = rows[(rows["setting"] == setting) & (rows["metric"] == metric)].set_index("method")
            if at.empty:
                continue
            cells = []
            for method in methods:
                if method in at.index:
                    hit = at.loc[method]
                    n = int(hit["n_seeds"])
                    title = f"mean over {n} replicate{'s' * (n != 1)}" + (
                        f"; varies: {varies}" if varies else ""
                    )
                    cells.append({"text": format_score(metric, hit["mean"], hit["std"]), "title": title})
                else:
                    cells.append({"text": "–", "title": "not measured for this method"})
            label = f"{setting} · {_label(metric)}" if len(settings) > 1 else _label(metric)
            table_rows.append({"label": label, "cells": cells})
    pairs = []
    for method in methods:
        chosen = sorted({p for p in rows.loc[rows["method"] == method, "pair"] if p})
        if chosen:
            pairs.append((method, ", ".join(chosen)))
    pair_of = dict(pairs)
    columns = [
        {
            "method": method,
            "title": f"selected features (block @ timestep, chosen on validation): {pair_of[method]}"
            if method in pair_of
            else "",
        }
        for method in methods
    ]
    return ExperimentView(
        name=name,
        slug=slug,
        sentences=sentences,
        figure=_uri(experiment_figure(rows, name)),
        columns=columns,
        rows=table_rows,
        pairs=pairs,
    )


# -- 3: per class ------------------------------------------------------------------------------------
@dataclass
class MethodClasses:
    method: str
    seed: str
    per_class: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    confusion: ConfusionTable


@dataclass
class ClassesView:
    methods: list[MethodClasses]
    side_by_side: list[dict[str, Any]]  # class, support, F1 per method (P and R in titles)


def _first_seed(folder: Path, file: str = "per_class.csv") -> Path | None:
    seeds = sorted(
        (p for p in folder.glob("seed*") if (p / file).is_file()),
        key=lambda p: (len(p.name), p.name),
    )
    return seeds[0] if seeds else None


def _classes(results_dir: Path, slug: str, methods: list[str]) -> ClassesView | None:
    root = results_dir / "metrics" / slug
    views = []
    for method in methods:
        folder = _first_seed(root / method)
        if folder is None:
            continue
        per_class = read_per_class(folder)
        confusion = read_confusion(folder)
        views.append(
            MethodClasses(
                method=method,
                seed=folder.name.removeprefix("seed"),
                per_class=per_class.to_dict("records"),
                pairs=confused_pairs(confusion),
                confusion=confusion_table(confusion),
            )
        )
    if not views:
        return None
    support = {}
    scores: dict[str, dict[str, dict]] = {}
    for view in views:
        for record in view.per_class:
            support.setdefault(record["name"], record["support"])
            scores.setdefault(record["name"], {})[view.method] = record
    order = sorted(support, key=lambda name: (-support[name], name))
    side = [
        {
            "name": name,
            "support": support[name],
            "cells": [
                {
                    "text": f"{scores[name][v.method]['f1'] * 100:.1f}",
                    "title": f"{v.method}, {name}: precision {scores[name][v.method]['precision']:.0%}, "
                    f"recall {scores[name][v.method]['recall']:.0%}",
                }
                if v.method in scores[name]
                else {"text": "–", "title": ""}
                for v in views
            ],
        }
        for name in order
    ]
    return ClassesView(methods=views, side_by_side=side)


# -- 4: images and training -------------------------------------------------------------------------
def _study_figures(results_dir: Path) -> dict[str, dict[str, str]]:
    """Every PNG under figures/, keyed by file name, with its caption from captions.json."""
    folder = results_dir / "figures"
    captions_path = folder / "captions.json"
    captions = json.loads(captions_path.read_text(encoding="utf-8")) if captions_path.is_file() else {}
    return {
        path.name: {
            "name": path.name,
            "caption": str(captions.get(path.name, "")),
            "src": _uri(path.read_bytes()),
        }
        for path in sorted(folder.glob("*.png"))
    }


def _loss_curves(results_dir: Path) -> list[dict[str, str]]:
    """One figure per pre-training (a dataset and split), every backbone trained on it."""
    root = results_dir / TRAINING_DIR
    figures = []
    for key in sorted(p for p in root.glob("*") if p.is_dir()):
        logs = {
            method.name: {
                int(log.stem.removeprefix("seed")): read_loss_log(log)
                for log in sorted(method.glob("seed*.jsonl"))
            }
            for method in sorted(p for p in key.iterdir() if p.is_dir())
        }
        logs = {method: seeds for method, seeds in logs.items() if seeds}
        if logs:
            figures.append(
                {
                    "name": key.name,
                    "src": _uri(loss_figure(logs, f"pre-training on {key.name}")),
                    "empty": ", ".join(m for m, s in logs.items() if all(not len(log) for log in s.values())),
                }
            )
    return figures


@dataclass
class Mistake:
    src: str  # the image as a data URI; "" when the prepared dataset could not be read
    caption: str  # "true → predicted (p)"
    title: str


@dataclass
class MethodPredictions:
    method: str
    role: str
    seed: str
    n: int
    n_wrong: int
    accuracy: float
    mistakes: list[Mistake]
    images_note: str  # why the images are not shown, or ""
    reach: str  # where the kept images' accuracy reaches TARGET_ACCURACY, in words


@dataclass
class PredictionsView:
    methods: list[MethodPredictions]
    figure: str  # accuracy against coverage, one line per method


def _best_baseline(rows: pd.DataFrame, candidates: list[str]) -> str | None:
    """The candidate ranked first in the experiment's first setting on its first metric (accuracy
    where measured): the same ranking as the sentences of section 1."""
    if not candidates:
        return None
    metrics = [m for m in METRICS if m in set(rows["metric"])] + sorted(set(rows["metric"]) - set(METRICS))
    at = rows[
        (rows["setting"] == rows["setting"].iloc[0])
        & (rows["metric"] == metrics[0])
        & rows["method"].isin(candidates)
    ]
    ranked = at.sort_values("mean", ascending=False, kind="stable")["method"]
    return str(ranked.iloc[0]) if len(ranked) else candidates[0]


def _thumbnails(folder: Path, rows: list[int]) -> tuple[list[str], str]:
    """Each row's image as a data URI, from the dataset the probe's features were extracted from;
    when that cannot be read (a results folder moved without the cache), no image and the reason."""
    if not rows:
        return [], ""
    try:
        images = feature_dataset(folder).images
    except (OSError, ValueError, KeyError) as error:
        return [""] * len(rows), f"Images not shown: {error}"
    if max(rows) >= len(images):
        return [""] * len(rows), f"Images not shown: rows beyond the {len(images)} images of the dataset"
    return [_uri(thumbnail(images[row])) for row in rows], ""


def _predictions(results_dir: Path, slug: str, rows: pd.DataFrame) -> PredictionsView | None:
    """The diffusion probe and the best baseline of one experiment, from their first replicate that
    recorded per-image test predictions."""
    root = results_dir / "metrics" / slug
    found = {}
    for method in dict.fromkeys(rows["method"]):
        folder = _first_seed(root / method, PREDICTIONS_FILE)
        if folder is not None:
            found[method] = folder
    baseline = _best_baseline(rows, [m for m in found if m != DIFFUSION])
    shown = [(m, "DDPM features") for m in (DIFFUSION,) if m in found]
    shown += [(baseline, "best baseline")] if baseline else []
    if not shown:
        return None
    views, curves = [], {}
    for method, role in shown:
        folder = found[method]
        frame = read_predictions(folder / PREDICTIONS_FILE)
        curve = curves[method] = accuracy_coverage(frame)
        wrong = mistakes(frame)
        sources, note = _thumbnails(folder, [int(r) for r in wrong["row"]])
        reached = reach(curve)
        views.append(
            MethodPredictions(
                method=method,
                role=role,
                seed=folder.name.removeprefix("seed"),
                n=len(frame),
                n_wrong=int((frame["true"] != frame["predicted"]).sum()),
                accuracy=float(curve.accuracy[-1]),
                mistakes=[
                    Mistake(
                        src=src,
                        caption=f"{r.true} → {r.predicted} ({r.probability:.2f})",
                        title=f"dataset row {r.row}: true {r.true}, predicted {r.predicted} "
                        f"with probability {r.probability:.3f}",
                    )
                    for src, r in zip(sources, wrong.itertuples(index=False), strict=True)
                ],
                images_note=note,
                reach=f"accuracy reaches {TARGET_ACCURACY * 100:.0f} % when {reached[0] * 100:.0f} % of the "
                f"test images are kept (top-1 probability ≥ {reached[1]:.2f})"
                if reached
                else f"accuracy stays below {TARGET_ACCURACY * 100:.0f} % at every threshold",
            )
        )
    figure = coverage_figure(curves, str(rows["experiment"].iloc[0]), target=TARGET_ACCURACY)
    return PredictionsView(methods=views, figure=_uri(figure))


def _short_of_flops(config: dict[str, Any], budgets: list[dict[str, Any]]) -> list[str]:
    """Backbones of a FLOP-budget study that stopped for another reason (a preset's minutes cap on a
    slow or busy machine, a step cap) trained less than the budget the comparison is built on; the
    report says so instead of letting an unequal comparison pass as an equal one."""
    short = []
    for budget in budgets:
        method = str(budget.get("method", "–"))
        family = "diffusion" if method.split(" (")[0] == "diffusion" else "baselines"
        limit = (config.get(family) or {}).get("max_tflops")
        stopped = budget.get("stopped_by")
        if limit and stopped in ("time", "steps"):
            spent = budget.get("tflops")
            spent_text = f"{spent:.3g}" if isinstance(spent, int | float) else "?"
            short.append(f"{method}, seed {budget.get('seed', '–')}: {spent_text} of {limit:g} TFLOP")
    if not short:
        return []
    return [
        "Unequal budgets: these backbones stopped (minutes or step cap) before the study's FLOP "
        "budget, so they trained less than the others: " + "; ".join(short) + "."
    ]


# -- 5: provenance ----------------------------------------------------------------------------------
def _budgets(study: dict[str, Any]) -> list[list[str]]:
    rows = []
    for budget in study.get("budgets") or []:
        rows.append(
            [
                str(budget.get("method", "–")),
                _count(budget.get("seed")),
                _number(budget.get("minutes"), 1),
                _count(budget.get("steps")),
                _count(budget.get("images_seen")),
                _number(budget.get("tflops"), 2),
                _count(budget.get("parameters")),
                str(budget.get("precision") or "–"),  # absent from studies run before it was recorded
                str(budget.get("stopped_by") or "–"),
            ]
        )
    return rows


def _facts(study: dict[str, Any]) -> list[tuple[str, str]]:
    started, finished = study.get("started", "–"), study.get("finished", "–")
    took = _duration(started, finished)
    return [
        ("Name", str(study.get("name", "–"))),
        ("Git SHA", str(study.get("git_sha", "–"))),
        ("Started", str(started)),
        ("Finished", f"{finished} ({took})" if took else str(finished)),
        ("Seeds", ", ".join(str(seed) for seed in study.get("seeds", [])) or "–"),
        ("What a replicate varies", str(study.get("varies", "–"))),
    ]


def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    return Environment(
        loader=PackageLoader("plankdiff.report", "templates"),
        autoescape=True,  # every template, whatever its extension: data never becomes markup
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_report(results_dir: Path) -> Path:
    """Write `<results_dir>/report.html` from `study.json`, `headline.csv` and whatever per-class
    files, figures, training logs and tables exist; return its path. The two required files fail
    loudly if absent."""
    results_dir = Path(results_dir)
    for required in ("study.json", "headline.csv"):
        if not (results_dir / required).is_file():
            raise FileNotFoundError(f"{results_dir / required} not found: is {results_dir} a results folder?")
    study = json.loads((results_dir / "study.json").read_text(encoding="utf-8"))
    headline = read_headline(results_dir / "headline.csv")
    headline["std"] = headline["std"].astype(float)
    figures = _study_figures(results_dir)
    folders = study.get("experiments") or {}  # experiment → folder under metrics/ (`Study._report`)
    experiments = [
        _experiment(headline, name, str(folders.get(name, name)))
        for name in dict.fromkeys(headline["experiment"])
    ]
    placed: set[str] = set()
    for view in experiments:
        view.classes = _classes(results_dir, view.slug, [c["method"] for c in view.columns])
        view.predictions = _predictions(results_dir, view.slug, headline[headline["experiment"] == view.name])
        own = [name for name in figures if name.startswith(view.slug + "_")]
        view.figures = [figures[name] for name in own]
        placed.update(own)
    samples = [f for name, f in figures.items() if name.startswith("samples_")]
    contacts = [f for name, f in figures.items() if name.startswith("contact_")]
    placed.update(f["name"] for f in samples + contacts)
    other = [f for name, f in figures.items() if name not in placed]
    evaluations = evaluation_views(results_dir)
    tables = sorted((results_dir / "tables").glob("*.md"))
    metric_files = sorted(
        path.relative_to(results_dir).as_posix() for path in (results_dir / "metrics").rglob("*.json")
    )
    page = (
        _environment()
        .get_template("report.html.j2")
        .render(
            name=str(study.get("name", results_dir.name)),
            subtitle=f"{study.get('git_sha', 'unknown commit')} · {study.get('finished', study.get('started', ''))}",
            sections=SECTIONS,
            meaning=_meaning(study, headline),
            notes=[str(note) for note in study.get("notes") or []],
            experiments=experiments,
            evaluations=evaluations,
            other_figures=other,
            samples=samples,
            contacts=contacts,
            losses=_loss_curves(results_dir),
            facts=_facts(study),
            versions=sorted((study.get("versions") or {}).items()),
            machine=[(str(k), _plain(v)) for k, v in (study.get("machine") or {}).items()],
            datasets=[
                [name, _count(info.get("images")), _count(info.get("classes")), str(info.get("source", ""))]
                for name, info in (study.get("datasets") or {}).items()
            ],
            budgets=_budgets(study),
            readouts=[
                [str(r.get("dataset", "–")), str(r.get("split", "–")), _count(r.get("readouts"))]
                for r in study.get("test_readouts") or []
            ],
            tables=[
                (path.relative_to(results_dir).as_posix(), path.read_text(encoding="utf-8"))
                for path in tables
            ],
            metric_files=metric_files,
            config=json.dumps(study.get("config", {}), indent=2, ensure_ascii=False, default=str),
        )
    )
    out = results_dir / "report.html"
    atomic_write(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return out
