"""Compute-scaling curves gathered from studies run at different FLOP budgets."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from plankdiff.cli import app
from plankdiff.report.scaling import curve_methods, scaling_figure, scaling_table

EXPERIMENT = "ndsb long-tailed"
VARIES = "backbone seed, probe seed"


def write_study(root, *, name, tflops, accuracy, seeds=3, pretrain="ndsb"):
    """A results folder as a study writes it: study.json budgets per backbone and headline.csv."""
    root.mkdir(parents=True)
    budgets = [
        {"method": f"{method} ({pretrain})", "seed": seed, "tflops": tflops[method] + seed, "minutes": 1.0}
        for method in tflops
        for seed in range(seeds)
    ]
    (root / "study.json").write_text(json.dumps({"name": name, "budgets": budgets}))
    rows = []
    for method, value in accuracy.items():
        for metric, shift in (("accuracy", 0.0), ("macro_f1", -0.1)):
            std = 0.02 if seeds > 1 else float("nan")
            row = (EXPERIMENT, "in distribution", method, "p", metric, value + shift, std, seeds, VARIES)
            rows.append(row)
        rows.append((EXPERIMENT, "under shift", method, "p", "accuracy", 0.01, 0.0, seeds, VARIES))
    columns = ["experiment", "setting", "method", "pair", "metric", "mean", "std", "n_seeds", "varies"]
    pd.DataFrame(rows, columns=columns).to_csv(root / "headline.csv", index=False)
    return root


@pytest.fixture
def two_levels(tmp_path):
    low = write_study(
        tmp_path / "low",
        name="scaling-low",
        tflops={"diffusion": 8, "supervised": 8},
        accuracy={"diffusion": 0.3, "supervised": 0.5, "raw-pixels": 0.2},
        seeds=1,
    )
    mid = write_study(
        tmp_path / "mid",
        name="cpu",
        tflops={"diffusion": 25, "supervised": 25},
        accuracy={"diffusion": 0.45, "supervised": 0.55, "supervised (own head)": 0.5, "raw-pixels": 0.2},
    )
    return low, mid


def test_each_point_is_a_study_at_the_flops_its_backbones_used(two_levels):
    table = scaling_table(two_levels)
    diffusion = table[(table["method"] == "diffusion") & (table["metric"] == "accuracy")]
    # mean over seeds of the recorded TFLOPs: 8 (one seed), 25 + (0 + 1 + 2) / 3 = 26
    assert diffusion["tflops"].tolist() == [8.0, 26.0]
    assert diffusion["mean"].tolist() == [0.3, 0.45]
    assert diffusion["n_seeds"].tolist() == [1, 3]
    assert set(table["metric"]) == {"accuracy", "macro_f1"}
    assert (table[table["method"] == "raw-pixels"]["tflops"] == 0).all()
    own_head = table[table["method"] == "supervised (own head)"]
    assert own_head["tflops"].tolist() == [26.0, 26.0]  # the supervised network's own FLOPs
    assert "under shift" not in set(table.get("setting", []))  # in-distribution rows only
    assert len(table) == 2 * 3 * 2 + 2  # studies x methods x metrics, and the own head at one level


def test_the_figure_draws_every_experiment_and_refuses_an_unknown_one(two_levels):
    table = scaling_table(two_levels)
    # the own head (one level, and no backbone of its own) and raw pixels (a floor) are no curves
    assert curve_methods(table) == ["diffusion", "supervised"]
    assert scaling_figure(table, EXPERIMENT).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="no rows for experiment 'zoolake'"):
        scaling_figure(table, "zoolake")


def test_a_study_of_several_pretraining_sets_joins_each_experiment_to_its_own_backbones(tmp_path):
    mixed = write_study(tmp_path / "mixed", name="x", tflops={"diffusion": 8}, accuracy={"diffusion": 0.3})
    study = json.loads((mixed / "study.json").read_text())
    study["budgets"].append({"method": "diffusion (zoolake-2018)", "seed": 0, "tflops": 90})
    (mixed / "study.json").write_text(json.dumps(study))
    # without `pretrained_on` (a study.json written before it existed) the set is ambiguous
    with pytest.raises(ValueError, match="pre-trained on 2 sets.*does not say which one"):
        scaling_table([mixed])
    for pretrain, tflops in (("ndsb", 9.0), ("zoolake-2018", 90.0)):  # 9: mean of 8, 9, 10 (seeds)
        study["pretrained_on"] = {EXPERIMENT: pretrain}
        (mixed / "study.json").write_text(json.dumps(study))
        table = scaling_table([mixed])
        assert table[table["method"] == "diffusion"]["tflops"].unique().tolist() == [tflops]


def test_the_cli_writes_the_table_and_one_figure_per_experiment(two_levels, tmp_path):
    out = tmp_path / "scaling"
    result = CliRunner().invoke(app, ["report", "scaling", *map(str, two_levels), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(out / "scaling.csv")) == 14
    markdown = (out / "scaling.md").read_text()
    # low: diffusion 30 %, supervised 50 % (1 seed); mid: 45 / 55 % ± 2 (3 seeds), at 26 TFLOP
    assert "| method | scaling-low (8 TFLOP) | cpu (26 TFLOP) |" in markdown
    assert "| supervised | 50.0 (1, +20.0) | 55.0 ± 2.0 (3, +10.0) |" in markdown
    assert "| diffusion | 30.0 (1) | 45.0 ± 2.0 (3) |" in markdown
    assert (out / "scaling_ndsb_long-tailed.png").read_bytes().startswith(b"\x89PNG")
    missing = CliRunner().invoke(app, ["report", "scaling", str(tmp_path / "nothing"), "--out", str(out)])
    assert missing.exit_code == 1
    assert "study.json: not found" in missing.output
