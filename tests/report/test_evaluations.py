"""The evaluations' tables: mean ± std over seeds per (experiment, method, set or score), the goal
column, markdown copies, and nothing when a results folder holds no evaluation."""

from __future__ import annotations

import pandas as pd

from plankdiff.report.evaluations import (
    OPEN_SET_TABLE,
    PROCESSING_SHIFT_TABLE,
    evaluation_views,
    write_evaluation_tables,
)


def shift_rows() -> pd.DataFrame:
    rows = []
    for seed, (clean, jpeg) in enumerate([(0.60, 0.45), (0.62, 0.55)]):
        for name, accuracy in (("clean", clean), ("jpeg", jpeg)):
            drop = clean - accuracy
            rows.append(
                {
                    "experiment": "e",
                    "method": "diffusion",
                    "seed": seed,
                    "pair": "p",
                    "set": name,
                    "n": 10,
                    "accuracy": accuracy,
                    "macro_f1": accuracy / 2,
                    "accuracy_drop": drop,
                    "macro_f1_drop": drop / 2,
                    "meets_goal": drop <= 0.10,
                }
            )
    return pd.DataFrame(rows)


def test_shift_and_open_set_views(tmp_path):
    (tmp_path / "tables").mkdir()
    assert evaluation_views(tmp_path) == []
    shift_rows().to_csv(tmp_path / "tables" / PROCESSING_SHIFT_TABLE, index=False)
    pd.DataFrame(
        [
            {
                "experiment": "e",
                "method": "m",
                "seed": s,
                "held_out": 25,
                "score": "mahalanobis",
                "part": part,
                "unknown_rejected": r,
                "known_kept": 0.95,
                "auroc": a,
                "known_accuracy": 0.5,
            }
            # validation rows (what a score is chosen on) stay out of the report's test table
            for s, r, a, part in ((0, 0.4, 0.7, "test"), (1, 0.6, 0.9, "test"), (0, 0.0, 0.1, "val"))
        ]
    ).to_csv(tmp_path / "tables" / OPEN_SET_TABLE, index=False)
    shift, open_set = evaluation_views(tmp_path)
    rows = {row[2]: dict(zip(shift.headers, row, strict=True)) for row in shift.rows}
    assert rows["clean"]["accuracy (%)"] == "61.0 ± 1.4" and rows["clean"]["meets goal"] == "yes"
    assert rows["jpeg"]["accuracy drop (pp)"] == "11.0 ± 5.7"
    assert rows["jpeg"]["meets goal"] == "no"  # seed 0 lost 15 points: the goal holds for every seed or not
    assert shift.numeric == list(range(3, len(shift.headers)))
    assert len(open_set.rows) == 1
    row = dict(zip(open_set.headers, open_set.rows[0], strict=True))
    assert row["held-out classes rejected (%)"] == "50.0 ± 14.1" and row["AUROC"] == "0.800 ± 0.141"
    assert "25 per experiment" in open_set.caption
    written = write_evaluation_tables(tmp_path)
    assert [p.name for p in written] == ["processing_shift.md", "open_set.md"]
    assert "61.0 ± 1.4" in written[0].read_text()
