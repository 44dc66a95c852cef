"""The evaluations beyond the probes, as the report and `tables/*.md` show them: the processing
shift (accuracy and macro-F1 per shift, and the drop from the clean test) and open-set rejection
(held-out-class images rejected, known-class images kept, AUROC), each as mean ± std over seeds;
and, where the study ran it, the background normalisation ablation (`report.ablation`).

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
    ablation = ablation_table(results_dir)
    if ablation is not None:
        views.append(_view(ABLATION_FILE, ABLATION_TITLE, ABLATION_CAPTION, ablation))
    return views


def write_evaluation_tables(results_dir: Path) -> list[Path]:
    """`tables/processing_shift.md`, `tables/open_set.md` and `tables/background_ablation.md`, where
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
    "EvaluationView",
    "evaluation_views",
    "open_set_summary",
    "shift_summary",
    "write_evaluation_tables",
]
