"""The background normalisation ablation read side by side: per method and setting, the scores with
and without normalisation and their difference, from headline.csv and study.json's pairs."""

from __future__ import annotations

import json
import math

import pandas as pd

from plankdiff.report.ablation import ablation_summary, ablation_table
from plankdiff.report.evaluations import evaluation_views, write_evaluation_tables

WITH, WITHOUT = "zoolake/2018+2019→2020", "zoolake/2018+2019→2020 without background normalisation"


def headline() -> pd.DataFrame:
    rows = []
    scores = {  # (experiment, method, setting) → (accuracy, macro F1)
        (WITH, "diffusion", "in period / source"): (0.80, 0.60),
        (WITH, "diffusion", "under shift"): (0.50, 0.40),
        (WITHOUT, "diffusion", "in period / source"): (0.82, 0.61),
        (WITHOUT, "diffusion", "under shift"): (0.35, 0.20),
        (WITH, "simclr", "in period / source"): (0.70, 0.50),  # no row without: left out
        ("ndsb/long-tailed", "diffusion", "in distribution"): (0.5, 0.3),  # not an ablation pair
    }
    for (experiment, method, setting), (accuracy, f1) in scores.items():
        for metric, mean in (("accuracy", accuracy), ("macro_f1", f1)):
            rows.append(
                {
                    "experiment": experiment,
                    "setting": setting,
                    "method": method,
                    "pair": "",
                    "metric": metric,
                    "mean": mean,
                    "std": 0.01 if method == "diffusion" else math.nan,
                    "n_seeds": 2,
                }
            )
    rows.append({**rows[2], "setting": "drop", "metric": "drop_accuracy", "mean": 0.3})
    return pd.DataFrame(rows)


def test_with_and_without_side_by_side_per_method_and_setting():
    table = ablation_summary(headline(), {WITHOUT: WITH})
    assert list(table.columns[:3]) == ["experiment", "method", "setting"]
    assert [tuple(r) for r in table[["experiment", "method", "setting"]].itertuples(index=False)] == [
        (WITH, "diffusion", "in period / source"),
        (WITH, "diffusion", "under shift"),
    ]
    shifted = table.iloc[1]
    assert shifted["accuracy with (%)"] == "50.0 ± 1.0" and shifted["accuracy without (%)"] == "35.0 ± 1.0"
    assert shifted["accuracy difference (pp)"] == "-15.0"  # without minus with: normalisation helps here
    assert table.iloc[0]["macro F1 difference (pp)"] == "+1.0"


def test_the_report_has_the_table_only_when_the_study_ran_the_ablation(tmp_path):
    (tmp_path / "tables").mkdir()
    headline().to_csv(tmp_path / "headline.csv", index=False)
    (tmp_path / "study.json").write_text(json.dumps({"name": "s", "ablations": {}}))
    assert ablation_table(tmp_path) is None and evaluation_views(tmp_path) == []
    (tmp_path / "study.json").write_text(json.dumps({"name": "s", "ablations": {WITHOUT: WITH}}))
    (view,) = evaluation_views(tmp_path)
    assert view.title == "Background normalisation ablation" and len(view.rows) == 2
    assert view.numeric == list(range(3, len(view.headers)))
    (written,) = write_evaluation_tables(tmp_path)
    assert written.name == "background_ablation.md" and "-15.0" in written.read_text()
