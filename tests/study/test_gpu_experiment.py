"""The shipped `gpu` experiment (64 px, the `paper` DDPM preset) run end to end on the CPU, with its
budgets cut to one step and its data to a few real images per class through `--set` overrides, so
the 64 px `paper` path (training, coarse-to-fine extraction, probes, report) runs in CI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from helpers import subset_zip
from plankdiff.study.config import load_experiment
from plankdiff.study.runner import Study


@pytest.mark.slow
def test_the_gpu_experiment_runs_on_the_cpu_to_its_report(shared_datasets: Path, tmp_path: Path):
    ndsb = subset_zip(shared_datasets / "ndsb.zip", "ndsb", tmp_path / "ndsb.zip", n_classes=3, per_class=12)
    # Every dataset of the file is prepared; only NDSB's backbones are trained and scored here.
    small = {
        name: subset_zip(
            shared_datasets / f"{name}.zip", name, tmp_path / f"{name}.zip", n_classes=2, per_class=4
        )
        for name in ("zoolake", "pwssc")
    }
    overrides = [
        f"datasets.ndsb.source={ndsb}",
        f"datasets.ndsb-nopol.source={ndsb}",
        f"datasets.zoolake.source={small['zoolake']}",
        f"datasets.pwssc.source={small['pwssc']}",
        f"datasets.pwssc-nopol.source={small['pwssc']}",
        "experiments=[ndsb]",
        # The zoolake backbones are not needed by NDSB alone, and their temporal splits need 20+
        # images per class and year, which a CPU test cannot afford at 64 px.
        "pretrain={ndsb: {dataset: ndsb, split: long-tailed}}",
        "seeds=[0]",
        # One optimiser step each (a budget runs out after the step that crosses it).
        "diffusion.max_minutes=0.001",
        "diffusion.batch_size=1",
        "diffusion.samples=0",
        "baselines.max_minutes=0.001",
        "baselines.batch_size=4",
        # Five full-width backbones at 64 px would leave ~0.7 GB of checkpoints; 12 suits every
        # method (MAE: 3 heads of 4, a decoder of 8 in 4 heads of 2).
        "baselines.width=12",
        "caps={train: 4, val: 2, test: 2}",
        "splits={balanced_min_train: 3, balanced_cap: 4}",
        "features={timesteps: [5], per_class_train: 1, per_class_val: 1, keep_timesteps: 1, batch_size: 8}",
        "protocol={losses: [ce], epochs: 2, min_steps: 5, bootstrap: 10}",
        "label_fractions=[1.0]",
    ]
    config = load_experiment("gpu", overrides=overrides)
    assert config.diffusion.preset == "paper" and config.datasets["ndsb"].size == 64

    # The `paper` U-Net's run folder (weights, EMA, optimizer state) is ~0.7 GB: kept under tmp_path,
    # which pytest deletes when the test passes, rather than in the session's cache until it ends.
    report = Study(config, results_root=tmp_path / "results", work_root=tmp_path / "work").run()

    assert report is not None and report.exists()
    results = tmp_path / "results" / "gpu"
    headline = pd.read_csv(results / "headline.csv")
    assert {"ndsb/long-tailed", "ndsb/balanced"} <= set(headline["experiment"])
    assert {"diffusion", "raw-pixels", *config.baselines.methods} <= set(headline["method"])
    study = json.loads((results / "study.json").read_text())
    trained = study["config"]["diffusion"]
    assert (trained["preset"], trained["max_minutes"]) == ("paper", 0.001)  # the overrides are recorded
    diffusion = headline[(headline["method"] == "diffusion") & (headline["experiment"] == "ndsb/long-tailed")]
    # The selected pair is a 64 px U-Net's: its blocks compute at 64×64 down to 8×8.
    assert diffusion["pair"].str.contains(r"@(?:64|32|16|8)/t=5").all(), diffusion["pair"].tolist()
    assert "ndsb/long-tailed" in report.read_text()
