"""`plankdiff init`: the experiment file it writes explains every key, is accepted by `plankdiff run`
as is, and (at tiny budgets) takes a folder of images that is not a shipped dataset to a report."""

from __future__ import annotations

import importlib
import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from pydantic import BaseModel
from rich.console import Console
from typer.testing import CliRunner

from helpers import read_manifest
from plankdiff.cli import app
from plankdiff.study.config import ExperimentConfig, OwnExperiment, load_experiment
from plankdiff.study.template import PLACEHOLDER, experiment_template

# Three NDSB classes under made-up names, as someone's own ImageFolder would hold them.
RENAMED = {"chaetognath_sagitta": "arrow_worms", "copepod_calanoid": "copepods", "detritus_other": "snow"}
PER_CLASS = 30


@pytest.fixture
def run_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANKDIFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(importlib.import_module("plankdiff.study.cli"), "console", Console(width=400))
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(app, [str(a) for a in args])
        result.text = " ".join(result.output.split())
        return result

    return run


def keys(model: type[BaseModel]) -> set[str]:
    """Every key an experiment file may hold, nested models included."""
    out = set()
    for name, field in model.model_fields.items():
        out.add(name)
        for inner in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                out |= keys(inner)
    return out


def test_the_template_explains_every_key_of_an_experiment_file():
    text = experiment_template(name="mine", dataset="mine", source="x")
    expected = keys(ExperimentConfig) | keys(OwnExperiment) | {"source", "preset", "methods"}
    assert len(expected) > 40  # the walk reached the nested models (datasets, protocol, splits, ...)
    missing = sorted(k for k in expected if f"{k}:" not in text)
    assert missing == [], f"keys the template does not show or explain: {missing}"


def test_init_refuses_to_overwrite_and_to_read_a_missing_source(run_cli, tmp_path):
    target = tmp_path / "mine.yaml"
    assert run_cli("init", target).exit_code == 0
    assert PLACEHOLDER in target.read_text()
    again = run_cli("init", target)
    assert again.exit_code == 1 and "already exists; choose another path or pass --force" in again.text
    missing = run_cli("init", tmp_path / "other.yaml", "--source", tmp_path / "nowhere")
    assert missing.exit_code == 1 and "no such file or folder" in missing.text
    assert not (tmp_path / "other.yaml").exists()


@pytest.fixture
def my_images(shared_datasets: Path, tmp_path: Path) -> Path:
    """A folder of images in ImageFolder layout with class names no shipped dataset has."""
    folder = tmp_path / "My Images"
    rows = read_manifest(shared_datasets / "ndsb.zip", "ndsb")
    with zipfile.ZipFile(shared_datasets / "ndsb.zip") as archive:
        for label, renamed in RENAMED.items():
            chosen = sorted(r["path"] for r in rows if r["label"] == label)[:PER_CLASS]
            (folder / renamed).mkdir(parents=True)
            for i, path in enumerate(chosen):
                (folder / renamed / f"img{i:03d}{Path(path).suffix}").write_bytes(
                    archive.read(f"ndsb/{path}")
                )
    return folder


@pytest.mark.slow
def test_an_init_experiment_file_takes_a_folder_of_ones_own_images_to_a_report(run_cli, my_images, tmp_path):
    path = tmp_path / "mine.yaml"
    written = run_cli("init", path, "--source", my_images)
    assert written.exit_code == 0, written.output
    assert f"{len(RENAMED) * PER_CLASS} images in {len(RENAMED)} classes" in written.text
    assert load_experiment(path).own  # accepted as written, before the edits below
    config = yaml.safe_load(path.read_text())
    # Tiny budgets: the file's structure (dataset, pre-training, experiments) is kept as written.
    config["datasets"]["my-images"]["size"] = 16
    config["diffusion"] = {"preset": "tiny", "max_tflops": 0.002}
    config["baselines"] = {"methods": ["supervised"], "max_tflops": 0.002, "width": 8}
    config["features"] = {"timesteps": [5, 50], "per_class_train": 4, "per_class_val": 2, "keep_timesteps": 1}
    config["protocol"] |= {"epochs": 2, "min_steps": 10, "bootstrap": 20}
    config["splits"] |= {"balanced_min_train": 15, "balanced_cap": 18}  # 21 training images per class
    config["label_fractions"] = [0.5, 1.0]
    path.write_text(yaml.safe_dump(config))

    result = run_cli("run", path, "--results", tmp_path / "results")
    assert result.exit_code == 0, result.output
    results = tmp_path / "results" / "mine"
    assert (results / "report.html").exists()
    budgets = json.loads((results / "study.json").read_text())["budgets"]
    assert {b["method"] for b in budgets} == {"diffusion (my-images)", "supervised (my-images)"}
    # Every backbone trained (a FLOP budget stops after the step that reaches it, so at least one step).
    assert all(b["steps"] >= 1 and b["tflops"] > 0 for b in budgets), budgets
    headline = pd.read_csv(results / "headline.csv")
    assert set(headline["experiment"]) == {
        "my-images/long-tailed",
        "my-images/balanced",
        "my-images/label efficiency",
        "my-images/k-means (K = classes)",
    }
    assert set(headline["method"]) == {"diffusion", "supervised", "raw-pixels", "supervised (own head)"}
    accuracy = headline[(headline["metric"] == "accuracy") & (headline["setting"] == "in distribution")]
    assert len(accuracy) == 2 * 3 + 1 and accuracy["mean"].between(0, 1).all()
    assert "my-images/long-tailed" in (results / "report.html").read_text()
    assert (results / "figures" / "embedding.png").exists()  # the t-SNE of the first long-tailed one
    assert (results / "metrics" / "my-images_long-tailed" / "diffusion" / "seed0" / "selected.json").exists()

    # README's path on from there: a classifier from what the study selected, counts per sample.
    model, predictions = tmp_path / "model", tmp_path / "predictions"
    exported = run_cli(
        "export",
        "--from",
        results / "metrics" / "my-images_long-tailed" / "diffusion" / "seed0",
        "--out",
        model,
    )
    assert exported.exit_code == 0, exported.output
    predicted = run_cli("predict", model, my_images, "--out", predictions, "--counts", "pacc")
    assert predicted.exit_code == 0, predicted.output
    labels = pd.read_csv(predictions / "predictions.csv")
    assert len(labels) == len(RENAMED) * PER_CLASS
    assert set(labels["top1"]) <= set(RENAMED.values())  # the classes are the folder's own
    counts = pd.read_csv(predictions / "counts.csv")
    assert {"low", "high"} <= set(counts.columns)  # pacc estimates, with bootstrap intervals
