"""The headline table: one row per (experiment, setting, method), one column per metric.

`headline.csv` is long (one row per metric) because that is how the evaluation code produces it;
people read the wide form. Scores are stored as fractions, as scikit-learn returns them: those that
read as percentages (accuracy, F1, purity, and drops in them) are shown ×100 with one decimal, the
others (NMI, ARI, anything unknown) as fractions with three. The markdown writer is a few lines
here instead of a `tabulate` dependency.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from plankdiff.provenance import atomic_write

HEADLINE_COLUMNS = ("experiment", "setting", "method", "pair", "metric", "mean", "std", "n_seeds")
ROW_KEYS = ("experiment", "setting", "method", "pair")

# Known metrics in reading order, with the column label each gets and whether it is a percentage
# (accuracy-like: shown ×100) or a plain fraction. Unknown metrics follow, alphabetically, as fractions.
METRICS: dict[str, tuple[str, bool]] = {
    "accuracy": ("accuracy (%)", True),
    "macro_f1": ("macro F1 (%)", True),
    "drop_accuracy": ("accuracy drop (pp)", True),
    "drop_macro_f1": ("macro F1 drop (pp)", True),
    "nmi": ("NMI", False),
    "ari": ("ARI", False),
    "hungarian_accuracy": ("Hungarian accuracy (%)", True),
    "purity": ("purity (%)", True),
}


def format_score(metric: str, mean: float, std: float) -> str:
    """'61.2 ± 0.4' for a percentage metric, '0.612 ± 0.004' for a fraction; no '±' with one seed
    (std is NaN then), so a single run does not pass for a zero-variance one."""
    percent = METRICS.get(metric, ("", False))[1]
    if percent and abs(mean) > 1:
        # A fraction can only lie in [-1, 1]; anything else means the writer stored percentages,
        # and ×100 would silently print 6120.0.
        raise ValueError(f"{metric} = {mean}: headline.csv must hold fractions, not percentages")
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    text = f"{mean * scale:.{digits}f}"
    if not math.isnan(std):
        text += f" ± {std * scale:.{digits}f}"
    return text


def read_headline(path: Path) -> pd.DataFrame:
    """`headline.csv` with its columns checked; an empty `pair` (baselines have none) stays ''."""
    frame = pd.read_csv(
        path, keep_default_na=False, na_values={"mean": ["", "nan", "NaN"], "std": ["", "nan", "NaN"]}
    )
    missing = [column for column in HEADLINE_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    return frame


def headline_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The wide table: experiment, setting, method, pair (dropped when no row has one), seeds, then
    one "mean ± std" column per metric. Rows keep the order of their first appearance in the CSV,
    which is the order the study wrote them in; a metric a row lacks is left blank."""
    frame = frame.copy()
    frame["pair"] = frame["pair"].fillna("").astype(str)
    frame["std"] = frame["std"].astype(float)
    known = [metric for metric in METRICS if metric in set(frame["metric"])]
    metrics = known + sorted(set(frame["metric"]) - set(known))
    rows = []
    for keys, group in frame.groupby(list(ROW_KEYS), sort=False):
        row = dict(zip(ROW_KEYS, keys, strict=True))
        row["seeds"] = "/".join(str(n) for n in sorted(set(group["n_seeds"].astype(int))))
        for metric in metrics:
            hits = group[group["metric"] == metric]
            if len(hits) > 1:
                raise ValueError(f"{keys}: {len(hits)} rows for metric {metric!r}")
            label = METRICS.get(metric, (metric, False))[0]
            row[label] = "" if hits.empty else format_score(metric, hits["mean"].iloc[0], hits["std"].iloc[0])
        rows.append(row)
    table = pd.DataFrame(
        rows, columns=[*ROW_KEYS, "seeds", *(METRICS.get(m, (m, False))[0] for m in metrics)]
    )
    if not (table["pair"] != "").any():
        table = table.drop(columns="pair")
    return table


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-markdown table, columns padded so the raw file reads as a table too. A '|' inside a
    cell is escaped and line breaks become spaces, so no value can break the table's structure."""

    def cell(value: object) -> str:
        return " ".join(str(value).splitlines()).replace("|", "\\|")

    header = [cell(column) for column in frame.columns]
    body = [[cell(value) for value in row] for row in frame.itertuples(index=False)]
    widths = [max(3, len(header[i]), *(len(row[i]) for row in body)) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(text.ljust(width) for text, width in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), line(["-" * width for width in widths]), *map(line, body)]) + "\n"


def write_tables(results_dir: Path) -> Path:
    """Write `tables/headline.md` from `headline.csv`, so the numbers read well on GitHub too (and
    the evaluations' tables, `report.evaluations`, where the folder holds them)."""
    from plankdiff.report.evaluations import write_evaluation_tables  # it imports this module

    results_dir = Path(results_dir)
    write_evaluation_tables(results_dir)
    markdown = to_markdown(headline_table(read_headline(results_dir / "headline.csv")))
    out = results_dir / "tables" / "headline.md"
    atomic_write(out, lambda tmp: tmp.write_text(markdown, encoding="utf-8"))
    return out
