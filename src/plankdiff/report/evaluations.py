"""The evaluations beyond the probes, as the report and `tables/*.md` show them: the processing
shift (accuracy and macro-F1 per shift, and the drop from the clean test) and open-set rejection
(held-out-class images rejected, known-class images kept, AUROC) and class counts under shift
(Bray–Curtis and prevalence error of each counting method, pooled and per capture day), each as
mean ± std over seeds; and, where the study ran it, the background normalisation ablation
(`report.ablation`).

The study writes one row per seed in `tables/processing_shift.csv` and `tables/open_set.csv`
(`Study._report`); `plankdiff evaluate` writes the same columns for one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from plankdiff.provenance import atomic_write
from plankdiff.report.ablation import ABLATION_CAPTION, ABLATION_FILE, ABLATION_TITLE, ablation_table
from plankdiff.report.tables import format_score, to_markdown

PROCESSING_SHIFT_TABLE = "processing_shift.csv"
OPEN_SET_TABLE = "open_set.csv"
QUANTIFICATION_TABLE = "quantification.csv"
# Issue #16's goal on ZooLake 2020 with a classifier of the best CPU backbone.
QUANTIFICATION_GOAL = "goal on ZooLake 2020: pooled Bray–Curtis ≤ 0.15 and per-day median ≤ 0.35"
# The goal for the processing shift, in points of accuracy (`processing_shift.GOAL_MAX_DROP`).
GOAL_TEXT = "goal: no single shift costs more than 10 points of accuracy"

# column in the CSV → (label, metric name `format_score` formats it as)
SHIFT_COLUMNS = {
    "accuracy": ("accuracy (%)", "accuracy"),
    "macro_f1": ("macro F1 (%)", "macro_f1"),
    "accuracy_drop": ("accuracy drop (pp)", "drop_accuracy"),
    "macro_f1_drop": ("macro F1 drop (pp)", "drop_macro_f1"),
}
OPEN_SET_COLUMNS = {
    "unknown_rejected": ("held-out classes rejected (%)", "accuracy"),
    "known_kept": ("known classes kept (%)", "accuracy"),
    "auroc": ("AUROC", "auroc"),
    "known_accuracy": ("known-class accuracy (%)", "accuracy"),
}


# (sample row, column in the CSV) → (label, metric name `format_score` formats it as)
QUANTIFICATION_COLUMNS = {
    ("(pooled)", "bray_curtis"): ("pooled Bray–Curtis", "bray_curtis"),
    ("(median over samples)", "bray_curtis"): ("per-day median Bray–Curtis", "bray_curtis"),
    ("(pooled)", "mae"): ("pooled prevalence MAE", "mae"),
    ("(median over samples)", "mae"): ("per-day median prevalence MAE", "mae"),
    ("(pooled)", "ece_target_before"): ("target ECE before T", "ece"),
    ("(pooled)", "ece_target_after"): ("target ECE after T", "ece"),
}


@dataclass
class EvaluationView:
    file: str  # its markdown copy under tables/
    title: str
    caption: str
    headers: list[str]
    rows: list[list[str]]
    numeric: list[int]


def _summary(frame: pd.DataFrame, keys: list[str], columns: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """One row per `keys` (in order of first appearance): seeds, then "mean ± std" per column."""
    rows = []
    for values, group in frame.groupby(keys, sort=False):
        row = dict(zip(keys, values, strict=True))
        row["seeds"] = str(group["seed"].nunique())
        for column, (label, metric) in columns.items():
            scores = group[column].astype(float)
            std = scores.std(ddof=1) if len(scores) > 1 else float("nan")
            row[label] = format_score(metric, float(scores.mean()), float(std))
        rows.append(row)
    return pd.DataFrame(rows)


def shift_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per experiment, method and set (clean, then each shift), and whether every seed met the goal."""
    table = _summary(frame, ["experiment", "method", "set"], SHIFT_COLUMNS)
    met = frame.groupby(["experiment", "method", "set"], sort=False)["meets_goal"].all()
    table["meets goal"] = ["yes" if ok else "no" for ok in met.to_numpy()]
    return table


def open_set_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """The test rows only: the validation rows (`part` val, studies since relative Mahalanobis and
    kNN) are what a score is chosen on, and stay in the CSV."""
    if "part" in frame:
        frame = frame[frame["part"] == "test"]
    return _summary(frame, ["experiment", "method", "score"], OPEN_SET_COLUMNS)


def quantification_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per experiment, method and counting method: the pooled and per-day median scores and the
    target's calibration error before and after temperature scaling, mean ± std over seeds; with the
    capture days scored and those in the median, the images counted and those of classes the probe
    does not know (the first seed's: every seed counts the same images)."""
    keys = ["experiment", "method", "counting"]
    wide = frame[frame["sample"] == "(pooled)"][[*keys, "seed"]].reset_index(drop=True)
    for (sample, column), (label, _) in QUANTIFICATION_COLUMNS.items():
        part = frame[frame["sample"] == sample][[*keys, "seed", column]].rename(columns={column: label})
        wide = wide.merge(part, on=[*keys, "seed"], how="left")
    columns = {label: (label, metric) for label, metric in QUANTIFICATION_COLUMNS.values()}
    table = _summary(wide, keys, columns)
    first = frame.drop_duplicates([*keys, "sample"])
    days = first[~first["sample"].isin(["(pooled)", "(median over samples)"])]
    pooled = first[first["sample"] == "(pooled)"].set_index(keys)
    index = pd.MultiIndex.from_frame(table[keys])
    for label, chosen in (("days", days), ("days in median", days[days["in_median"].astype(bool)])):
        table[label] = chosen.groupby(keys).size().reindex(index).fillna(0).astype(int).to_numpy()
    table["images"] = pooled["n"].reindex(index).to_numpy()
    table["other-class images"] = pooled["n_other"].reindex(index).to_numpy()
    return table


def _view(file: str, title: str, caption: str, table: pd.DataFrame) -> EvaluationView:
    """Three key columns (experiment, method, set or score), then numbers."""
    headers = [str(c) for c in table.columns]
    rows = [[str(v) for v in row] for row in table.itertuples(index=False)]
    return EvaluationView(file, title, caption, headers, rows, list(range(3, len(headers))))


def evaluation_views(results_dir: Path) -> list[EvaluationView]:
    """The report's tables of the evaluations a results folder holds (none when it holds none)."""
    tables = Path(results_dir) / "tables"
    views = []
    if (tables / PROCESSING_SHIFT_TABLE).is_file():
        frame = pd.read_csv(tables / PROCESSING_SHIFT_TABLE)
        views.append(
            _view(
                "processing_shift.md",
                "Processing shift",
                "The probe selected on clean validation, applied to shifted copies of the test images (built "
                f"from the raw files, prepared like the clean set). Drops are from the clean test; {GOAL_TEXT}.",
                shift_summary(frame),
            )
        )
    if (tables / OPEN_SET_TABLE).is_file():
        frame = pd.read_csv(tables / OPEN_SET_TABLE)
        held = ", ".join(sorted({str(n) for n in frame["held_out"]})) if "held_out" in frame else "?"
        views.append(
            _view(
                "open_set.md",
                "Open-set rejection",
                f"Classes held out of the probe ({held} per experiment, every n-th class name); the cut of each "
                "score keeps the chosen share of known-class validation images. On test: held-out-class images "
                "rejected, known-class images kept, AUROC (unknown = positive).",
                open_set_summary(frame),
            )
        )
    if (tables / QUANTIFICATION_TABLE).is_file():
        frame = pd.read_csv(
            tables / QUANTIFICATION_TABLE, keep_default_na=False, na_values=["", "nan", "NaN"]
        )
        views.append(
            _view(
                "quantification.md",
                "Class counts under shift (quantification)",
                "Each method's probe, selected on validation and temperature-scaled there, counts every image of "
                "the shifted target (no per-class cap) by classify and count (cc), probabilistic cc (pcc), "
                "adjusted pcc (pacc) and EM prior adjustment (emq), fitted on the validation posteriors. "
                "Bray–Curtis between true and estimated counts and mean absolute prevalence error, pooled over "
                "the target and median over capture days; images of classes the probe does not know are counted "
                f"apart. {QUANTIFICATION_GOAL}. EMQ assumes only the class priors change; PACC that p(x|y) holds.",
                quantification_summary(frame),
            )
        )
    ablation = ablation_table(results_dir)
    if ablation is not None:
        views.append(_view(ABLATION_FILE, ABLATION_TITLE, ABLATION_CAPTION, ablation))
    return views


def write_evaluation_tables(results_dir: Path) -> list[Path]:
    """`tables/processing_shift.md`, `tables/open_set.md`, `tables/quantification.md` and
    `tables/background_ablation.md`, where
    the results folder holds what they read."""
    written = []
    for view in evaluation_views(results_dir):
        markdown = to_markdown(pd.DataFrame(view.rows, columns=view.headers))
        out = Path(results_dir) / "tables" / view.file
        atomic_write(out, lambda tmp, text=markdown: tmp.write_text(text, encoding="utf-8"))
        written.append(out)
    return written


__all__ = [
    "OPEN_SET_TABLE",
    "PROCESSING_SHIFT_TABLE",
    "QUANTIFICATION_TABLE",
    "EvaluationView",
    "evaluation_views",
    "open_set_summary",
    "quantification_summary",
    "shift_summary",
    "write_evaluation_tables",
]
