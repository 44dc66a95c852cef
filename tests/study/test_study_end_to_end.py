"""A whole study on small real subsets: every stage runs, the report is written, and a second run
reuses every stage instead of recomputing it."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import kill_9_at_a_random_point, read_manifest, write_subset_zip
from plankdiff.data.timestamps import capture_time
from plankdiff.diffusion.train import DiffusionTrainer
from plankdiff.evaluation.open_set import OOD_SCORES
from plankdiff.provenance import read_json
from plankdiff.study.config import load_experiment
from plankdiff.study.runner import Study, StudyInterrupted
from plankdiff.training import TrainResult

NDSB_CLASSES = ("chaetognath_sagitta", "copepod_calanoid", "appendicularian_s_shape", "detritus_other")
PWSSC_CLASSES = ("Parasagitta", "Calanus", "Oikopleura", "Snow")


def pick(rows: list[dict], label: str, n: int, year: int | None = None) -> list[dict]:
    chosen = [r for r in rows if r["label"] == label]
    if year is not None:
        chosen = [r for r in chosen if (t := capture_time(r["path"])) is not None and t.year == year]
    chosen = sorted(chosen, key=lambda r: r["path"])[:n]
    assert len(chosen) == n, f"{label}: fewer than {n} images"
    return chosen


def assert_every_stage_reused(config, results: Path) -> None:
    """A dry run of `config` finds every stage it would run already recorded with the same inputs."""
    again = Study(config, results_root=results, dry_run=True)
    again.run()
    statuses = {status for _, status in again.plan() if status in ("run", "reuse")}
    assert statuses == {"reuse"}, again.plan()


@pytest.fixture(scope="module")
def tiny_experiment(shared_datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-study")
    ndsb = read_manifest(shared_datasets / "ndsb.zip", "ndsb")
    # The balanced split keeps classes with >= 60 training images: 90 images per class reach it.
    write_subset_zip(
        shared_datasets / "ndsb.zip",
        "ndsb",
        [r for c in NDSB_CLASSES for r in pick(ndsb, c, 90)],
        folder / "ndsb.zip",
    )
    pwssc = read_manifest(shared_datasets / "pwssc.zip", "pwssc")
    write_subset_zip(
        shared_datasets / "pwssc.zip",
        "pwssc",
        [r for c in PWSSC_CLASSES for r in pick(pwssc, c, 15)],
        folder / "pwssc.zip",
    )
    zoolake = read_manifest(shared_datasets / "zoolake.zip", "zoolake")
    per_year = {2018: 30, 2019: 25, 2020: 25}
    classes = ("dinobryon", "cyclops", "nauplius")  # each has >= 25 images in 2018, 2019 and 2020
    rows = [r for c in classes for year, n in per_year.items() for r in pick(zoolake, c, n, year)]
    write_subset_zip(shared_datasets / "zoolake.zip", "zoolake", rows, folder / "zoolake.zip")
    (folder / "tiny.yaml").write_text(f"""
name: tiny
seeds: [0, 1, 2]
datasets:
  ndsb: {{source: {folder / "ndsb.zip"}, size: 16}}
  zoolake: {{source: {folder / "zoolake.zip"}, size: 16}}
  pwssc: {{source: {folder / "pwssc.zip"}, size: 16}}
  ndsb-nopol: {{source: {folder / "ndsb.zip"}, size: 16, polarity: false}}
  pwssc-nopol: {{source: {folder / "pwssc.zip"}, size: 16, polarity: false}}
pretrain:
  ndsb: {{dataset: ndsb, split: long-tailed}}
  zoolake-2018+2019: {{dataset: zoolake, split: "temporal:2018+2019-2020"}}
  zoolake-2018: {{dataset: zoolake, split: "temporal:2018-2019"}}
diffusion: {{preset: tiny, max_minutes: 0.02}}
baselines: {{methods: [supervised, simclr], max_minutes: 0.01, width: 8}}  # ~2 MB a run, not ~130 MB
features: {{timesteps: [5, 50], per_class_train: 4, per_class_val: 2, keep_timesteps: 1, batch_size: 64}}
protocol: {{epochs: 2, min_steps: 10, bootstrap: 20, losses: [ce, logit-adjusted]}}
label_fractions: [0.5, 1.0]
evaluations: {{processing_shift: {{shifts: [inverted, jpeg]}}, open_set: {{hold_out_every: 2}}}}
""")
    return folder


def test_a_tiny_study_runs_end_to_end_and_then_reuses_every_stage(tiny_experiment: Path, tmp_path: Path):
    config = load_experiment(tiny_experiment / "tiny.yaml")
    report = Study(config, results_root=tmp_path / "results").run()
    assert report is not None and report.exists()
    results = tmp_path / "results" / "tiny"
    headline = pd.read_csv(results / "headline.csv")
    experiments = set(headline["experiment"])
    assert {"ndsb/long-tailed", "ndsb/balanced", "zoolake/2018+2019→2020", "zoolake/2018→2019"} <= experiments
    assert {
        "ndsb→pwssc/with polarity normalisation",
        "ndsb→pwssc/without polarity normalisation",
    } <= experiments
    assert set(headline["method"]) >= {
        "diffusion",
        "supervised",
        "simclr",
        "raw-pixels",
        "supervised (own head)",
    }
    shifted = headline[(headline["setting"] == "under shift") & (headline["metric"] == "accuracy")]
    assert len(shifted) == 4 * 4  # 4 shift experiments × (diffusion, supervised, simclr, raw pixels)
    accuracy = headline[headline["metric"] == "accuracy"]
    assert accuracy["mean"].between(0, 1).all() and (accuracy["n_seeds"] >= 1).all()
    probed = headline[
        (headline["setting"] == "in distribution") & (headline["method"] != "supervised (own head)")
    ]
    assert (probed["n_seeds"] == 3).all()  # the own head is one network: one value, no probe seeds
    html = report.read_text()
    assert "ndsb/long-tailed" in html and "<table" in html
    assert (results / "figures" / "label_efficiency.png").exists()
    study = json.loads((results / "study.json").read_text())
    # each experiment names the pre-training set of its backbones (a scaling curve joins on it)
    assert study["pretrained_on"]["ndsb/long-tailed"] == "ndsb"
    assert study["pretrained_on"]["zoolake/2018+2019→2020"] == "zoolake-2018+2019"
    assert set(study["pretrained_on"]) == set(study["experiments"])
    assert study["budgets"] and {b["precision"] for b in study["budgets"]} <= {"fp32", "bf16"}
    notes = study["notes"]
    assert any("supervised backbone was pre-trained on every training label" in n for n in notes)
    assert "every training label" in html  # the caveat reaches the report, not only study.json
    drops = {p.name for p in (results / "metrics").rglob("heatmap_drop_*.png")}
    assert "heatmap_drop_zoolake_2018+2019-to-2020.png" in drops, drops  # named after its experiment
    clustered = headline[headline["experiment"] == "ndsb/k-means (K = classes)"]
    assert len(clustered) and (clustered["n_seeds"] == 3).all()  # one k-means init per study seed
    kmeans = pd.read_csv(results / "tables" / "kmeans.csv")
    assert set(kmeans["seed"]) == {0, 1, 2}
    # The evaluations ran on the headline experiment, per method and seed, and reach the report.
    shift = pd.read_csv(results / "tables" / "processing_shift.csv")
    assert set(shift["experiment"]) == {"ndsb/long-tailed"} and set(shift["seed"]) == {0, 1, 2}
    assert set(shift["set"]) == {"clean", "inverted", "jpeg"}
    assert set(shift["method"]) == {"diffusion", "supervised", "simclr", "raw-pixels"}
    raw = shift[(shift["method"] == "raw-pixels") & (shift["set"] == "inverted")]
    assert (raw["accuracy_drop"] == 0).all()  # polarity normalisation undoes an inversion exactly
    open_set = pd.read_csv(results / "tables" / "open_set.csv")
    # every score, a validation and a test row each, per method and seed
    assert set(open_set["score"]) == set(OOD_SCORES) and len(open_set) == len(OOD_SCORES) * 2 * 4 * 3
    assert set(open_set["part"]) == {"val", "test"}
    assert open_set[["unknown_rejected", "known_kept", "auroc"]].stack().between(0, 1).all()
    assert "Processing shift" in html and "Open-set rejection" in html
    assert (results / "tables" / "open_set.md").exists()

    assert_every_stage_reused(config, tmp_path / "results")


def test_an_interrupted_training_stops_the_study_unrecorded(
    tiny_experiment: Path, tmp_path: Path, monkeypatch
):
    """A signal during pre-training must not leave a half-trained backbone recorded as finished."""
    config = load_experiment(tiny_experiment / "tiny.yaml").model_copy(update={"name": "interrupted"})

    def interrupted(trainer):
        return TrainResult(trainer.out, 3, 0.01, 96, 1.0, "interrupt")

    monkeypatch.setattr(DiffusionTrainer, "train", interrupted)
    # A work folder of its own: in the session's shared cache, the tiny study's identical DDPM would
    # be copied instead of trained (`StageCache` donors), and nothing would be interrupted.
    study = Study(config, results_root=tmp_path / "results", work_root=tmp_path / "studies")
    with pytest.raises(StudyInterrupted, match="rerun the same command to resume"):
        study.run()
    assert list((study.work / "stages").glob("prepare_*")) and not list(
        (study.work / "stages").glob("pretrain_*")
    )


def test_a_study_of_one_experiment_family_trains_and_reports_only_what_it_needs(
    tiny_experiment: Path, tmp_path: Path
):
    """After the full tiny study this reuses its NDSB stages; run alone, it computes them."""
    config = load_experiment(tiny_experiment / "tiny.yaml").model_copy(update={"experiments": ("ndsb",)})
    study = Study(config, results_root=tmp_path / "results")
    assert study.run() is not None
    trained = {name for name, _ in study.plan() if name.startswith("pretrain/")}
    assert trained and all(
        name.split("/")[2] == "ndsb" for name in trained
    )  # pretrain/seed<s>/<key>/<method>
    headline = pd.read_csv(tmp_path / "results" / "tiny" / "headline.csv")
    assert {e.split("/")[0] for e in headline["experiment"]} == {"ndsb"}


def test_a_ddpm_only_study_with_a_diffusion_option_trains_no_baseline_and_reports(
    tiny_experiment: Path, tmp_path: Path
):
    """The DDPM option studies (issue #15 §3): `baselines: {methods: []}` trains the DDPM alone, with
    the `diffusion:` block's option, and the report still has raw pixels as the floor."""
    from plankdiff.study.config import BaselineSpec, DiffusionSpec

    config = load_experiment(tiny_experiment / "tiny.yaml").model_copy(
        update={
            "name": "tiny-ddpm-only",
            "experiments": ("ndsb",),
            "seeds": (0,),
            "baselines": BaselineSpec(methods=()),
            "diffusion": DiffusionSpec(
                preset="tiny", max_minutes=0.02, timestep_sampling={"kind": "low-noise", "power": 2}
            ),
            "evaluations": load_experiment(tiny_experiment / "tiny.yaml").evaluations.model_copy(
                update={"processing_shift": None}
            ),
        }
    )
    study = Study(config, results_root=tmp_path / "results")
    assert study.run() is not None
    trained = [name for name, _ in study.plan() if name.startswith("pretrain/")]
    assert trained == ["pretrain/seed0/ndsb/diffusion"]
    run = study.work / "runs" / "seed0" / "ndsb" / "diffusion" / "config.json"
    recorded = read_json(run)["diffusion"]["train"]["timestep_sampling"]
    assert recorded == {"kind": "low-noise", "power": 2.0}
    headline = pd.read_csv(tmp_path / "results" / "tiny-ddpm-only" / "headline.csv")
    assert set(headline["method"]) == {"diffusion", "raw-pixels"}


KILLED_STUDY = """
import sys
import plankdiff.study.runner  # torch and every stage imported before the clock of the kill starts
from plankdiff.cli import app
print("running", flush=True)
app(["run", *sys.argv[1:]], prog_name="plankdiff")
"""


@pytest.mark.slow
def test_kill_9_at_a_random_point_then_rerun_gives_the_headline_of_an_uninterrupted_study(
    tiny_experiment: Path, tmp_path: Path, monkeypatch
):
    """FLOP budgets, not minutes: a training resumed from its checkpoint stops at the same step as an
    uninterrupted one, so every number must come out identical (with minutes it would not)."""
    from typer.testing import CliRunner

    from plankdiff.cli import app

    experiment = tmp_path / "one.yaml"
    experiment.write_text(f"""
name: one
seeds: [0]
experiments: [ndsb]
datasets:
  ndsb: {{source: {tiny_experiment / "ndsb.zip"}, size: 16}}
pretrain:
  ndsb: {{dataset: ndsb, split: long-tailed}}
diffusion: {{preset: tiny, max_tflops: 0.0035}}  # 5 steps of 0.73 GFLOP (checkpoints at 3 and 5)
baselines: {{methods: [simclr], max_tflops: 0.001, width: 8}}  # one step (3.4 GFLOP at batch 128)
features: {{timesteps: [5, 50], per_class_train: 4, per_class_val: 2, keep_timesteps: 1, batch_size: 64}}
protocol: {{epochs: 2, min_steps: 10, bootstrap: 20, losses: [ce]}}
label_fractions: [0.5, 1.0]
""")

    def run(name: str) -> pd.DataFrame:  # in this process, with its own cache of prepared data and stages
        monkeypatch.setenv("PLANKDIFF_CACHE", str(tmp_path / name / "cache"))
        result = CliRunner().invoke(app, ["run", str(experiment), "--results", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        return pd.read_csv(tmp_path / name / "one" / "headline.csv")

    started = time.perf_counter()
    straight = run("straight")
    duration = time.perf_counter() - started
    killed = kill_9_at_a_random_point(
        KILLED_STUDY,
        experiment,
        "--results",
        tmp_path / "killed",
        ready="running",
        within=duration,
        env={"PLANKDIFF_CACHE": str(tmp_path / "killed" / "cache")},
    )
    stages = sorted(p.stem for p in (tmp_path / "killed" / "cache").glob("studies/one/stages/*.json"))
    at_kill = f"killed after {killed.delay:.1f} of {duration:.1f} s, stages done: {stages}"
    again = run("killed")
    for method in ("diffusion", "simclr"):  # each stops at its FLOP budget, not at a step or time cap
        record = (
            tmp_path
            / "killed"
            / "cache"
            / "studies"
            / "one"
            / "stages"
            / f"pretrain_seed0_ndsb_{method}.json"
        )
        assert read_json(record)["result"]["stopped_by"] == "flops", at_kill
    assert {"diffusion", "simclr", "raw-pixels"} <= set(straight["method"])
    pd.testing.assert_frame_equal(again, straight, check_exact=True, obj=at_kill)


def test_a_study_resumed_from_its_stages_into_a_fresh_results_folder_writes_every_file(
    tiny_experiment: Path, tmp_path: Path
):
    """Every stage reused, nothing recomputed, yet the results folder holds what an uninterrupted
    study's does: the report reads the probes' per-experiment files (predictions, selections)."""
    config = load_experiment(tiny_experiment / "tiny.yaml").model_copy(
        update={"name": "resumed", "experiments": ("ndsb",), "seeds": (0,)}
    )
    assert Study(config, results_root=tmp_path / "first").run() is not None
    again = Study(config, results_root=tmp_path / "second")
    assert again.run() is not None
    assert {status for _, status in again.plan() if status in ("run", "reuse")} == {"reuse"}

    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}

    first, second = files(tmp_path / "first" / "resumed"), files(tmp_path / "second" / "resumed")
    assert any(name.endswith("test_predictions.csv") for name in first)
    assert first == second, sorted(first ^ second)


def test_the_dry_run_of_one_family_lists_only_the_datasets_it_prepares(tiny_experiment: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from plankdiff.cli import app

    experiment = tmp_path / "ndsb-only.yaml"
    experiment.write_text(
        "experiments: [ndsb]\n"
        + (tiny_experiment / "tiny.yaml").read_text().replace("name: tiny", "name: dry")
    )
    result = CliRunner().invoke(app, ["run", str(experiment), "--dry-run", "--results", str(tmp_path)])
    assert result.exit_code == 0, result.output
    prepared = [line.split()[-1] for line in result.output.splitlines() if "prepare/" in line]
    assert prepared == ["prepare/ndsb"], result.output


@pytest.mark.slow
def test_the_background_ablation_pretrains_every_method_again_on_the_unnormalised_images(
    tiny_experiment: Path, tmp_path: Path
):
    """`ablations: {background: true}`: NDSB → PWSSC and ZooLake 2018+2019 → 2020 again on preparations
    with `background: none`, every backbone pre-trained on that preparation and on the same images as
    its normalised counterpart; the stages of the study without the switch are untouched by it."""
    from dataclasses import replace

    from plankdiff.data.lineage import read_training_images
    from plankdiff.data.prepare import PreparedDataset
    from plankdiff.study.config import Ablations

    base = load_experiment(tiny_experiment / "tiny.yaml").model_copy(
        update={"name": "tiny-nobg", "experiments": ("ndsb-pwssc", "zoolake"), "seeds": (0,)}
    )
    base = base.model_copy(
        update={"evaluations": base.evaluations.model_copy(update={"processing_shift": None})}
    )
    config = base.model_copy(update={"ablations": Ablations(background=True)})
    study = Study(config, results_root=tmp_path / "results")
    report = study.run()
    assert report is not None
    ndsb, nobg = (PreparedDataset.open(study._dataset_name(k)) for k in ("ndsb", "ndsb-nobg"))
    assert (ndsb.params.background, nobg.params.background) == ("normalise", "none")
    # nothing else differs (the noise ceiling and corner-marker removal are part of the
    # normalisation: a preparation without it records neither)
    assert nobg.params.noise_ceiling is None and ndsb.params.noise_ceiling is not None
    assert (ndsb.params.markers, nobg.params.markers) == ("remove", "keep")
    assert ndsb.params == replace(
        nobg.params, background="normalise", noise_ceiling=ndsb.params.noise_ceiling, markers="remove"
    )
    assert ndsb.key != nobg.key and nobg.info["source_hash"] == ndsb.info["source_hash"]
    stages = study.work / "stages"
    for key, ablated, dataset in (
        ("ndsb", "ndsb-nobg", "ndsb-nobg"),
        ("zoolake-2018+2019", "zoolake-2018+2019-nobg", "zoolake-nobg"),
    ):
        for method in ("diffusion", "supervised", "simclr"):
            inputs = read_json(stages / f"pretrain_seed0_{ablated}_{method}.json")["inputs"]
            assert inputs["dataset"] == PreparedDataset.open(study._dataset_name(dataset)).key
            normalised = read_json(stages / f"pretrain_seed0_{key}_{method}.json")["inputs"]
            assert normalised["dataset"] != inputs["dataset"]
            same = read_training_images(study.work / "runs" / "seed0" / key / method)
            repeat = read_training_images(study.work / "runs" / "seed0" / ablated / method)
            assert same is not None and len(same) > 0 and (repeat == same).all(), (key, method)
    results = tmp_path / "results" / "tiny-nobg"
    headline = pd.read_csv(results / "headline.csv")
    ablated = {
        "ndsb→pwssc/without background normalisation",
        "zoolake/2018+2019→2020 without background normalisation",
    }
    assert ablated <= set(headline["experiment"])
    study_json = read_json(results / "study.json")
    assert study_json["ablations"] == {
        "ndsb→pwssc/without background normalisation": "ndsb→pwssc/with polarity normalisation",
        "zoolake/2018+2019→2020 without background normalisation": "zoolake/2018+2019→2020",
    }
    table = (results / "tables" / "background_ablation.md").read_text()
    for method in ("diffusion", "supervised", "simclr", "raw-pixels"):
        assert f"| {method} " in table
    assert "Background normalisation ablation" in report.read_text()

    # The study without the switch: every one of its stages is one the ablation study already ran.
    for without_switch in (base, config):
        assert_every_stage_reused(without_switch, tmp_path / "again")


def test_the_dry_run_of_the_normalisation_study_prepares_each_source_with_and_without_background(
    tiny_experiment: Path, tmp_path: Path, monkeypatch
):
    """`plankdiff run normalisation --dry-run` (its sources replaced by the tiny zips): the three
    sources are prepared twice, the second time as the ablation's `-nobg` datasets."""
    from typer.testing import CliRunner

    from plankdiff.cli import app

    monkeypatch.setenv("PLANKDIFF_CACHE", str(tmp_path / "cache"))
    sources = [
        f"--set=datasets.{k}.source={tiny_experiment / f'{k}.zip'}" for k in ("ndsb", "zoolake", "pwssc")
    ]
    result = CliRunner().invoke(
        app, ["run", "normalisation", *sources, "--dry-run", "--results", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    prepared = [line.split()[-1] for line in result.output.splitlines() if "prepare/" in line]
    assert prepared == [f"prepare/{k}{s}" for s in ("", "-nobg") for k in ("ndsb", "zoolake", "pwssc")], (
        result.output
    )


@pytest.mark.slow
def test_the_quantification_stage_counts_every_image_of_the_shifted_targets_per_capture_day(
    tiny_experiment: Path, tmp_path: Path
):
    """`evaluations.quantification` with test rows capped at 5 per class: every method's probe is
    scored on all 2020 ZooLake images and all PWSSC images of its classes, per capture day and pooled,
    and the table reaches the report."""
    from plankdiff.data.timestamps import capture_days, parse_capture_times
    from plankdiff.study.config import Caps, Evaluations, QuantificationSpec

    config = load_experiment(tiny_experiment / "tiny.yaml").model_copy(
        update={
            "name": "tiny-quantification",
            "experiments": ("zoolake", "ndsb-pwssc"),
            "seeds": (0,),
            "caps": Caps(train=40, val=10, test=5),
            "evaluations": Evaluations(quantification=QuantificationSpec(min_images=3)),
        }
    )
    study = Study(config, results_root=tmp_path / "results")
    report = study.run()
    assert report is not None
    results = tmp_path / "results" / "tiny-quantification"
    table = pd.read_csv(results / "tables" / "quantification.csv")
    assert set(table["experiment"]) == {"zoolake/2018+2019→2020", "ndsb→pwssc/with polarity normalisation"}
    assert set(table["method"]) == {"diffusion", "supervised", "simclr", "raw-pixels", "(no classifier)"}
    assert set(table["counting"]) == {"cc", "pcc", "pacc", "emq", "validation mix"}
    # The reference (the validation mix for every day) is one set of rows per experiment and seed,
    # on the same days and images as the counting methods, and needs no calibration.
    reference = table[table["method"] == "(no classifier)"]
    assert set(reference["counting"]) == {"validation mix"} and reference["temperature"].isna().all()
    counted = table[(table["method"] == "diffusion") & (table["counting"] == "cc")]
    key = ["experiment", "sample"]
    assert (
        reference.set_index(key)[["n", "n_other"]]
        .sort_index()
        .equals(counted.set_index(key)[["n", "n_other"]].sort_index())
    )
    table = table[table["method"] != "(no classifier)"]
    assert table[["bray_curtis", "mae"]].stack().between(0, 1).all()
    # Temperature scaling minimises the validation NLL, not the ECE: on 10 images per class the ECE
    # may rise; only its range is a property.
    calibration = ["ece_val_before", "ece_val_after", "ece_target_before", "ece_target_after"]
    assert table[calibration].stack().between(0, 1).all() and (table["temperature"] > 0).all()
    pooled = table[table["sample"] == "(pooled)"]
    zoolake = study.datasets["zoolake"].meta
    in_2020 = parse_capture_times(zoolake["capture_time"]).dt.year.to_numpy() == 2020
    zoo = pooled[pooled["experiment"] == "zoolake/2018+2019→2020"]
    assert (zoo["n"] == in_2020.sum()).all() and in_2020.sum() == 75  # uncapped: the cap kept 3 × 5
    pwssc = pooled[pooled["experiment"] == "ndsb→pwssc/with polarity normalisation"]
    assert (pwssc["n"] + pwssc["n_other"] == len(study.datasets["pwssc"])).all()
    assert (pwssc["n"] > 4 * 5).all()
    days = table[(table["experiment"] == "zoolake/2018+2019→2020") & ~table["sample"].str.startswith("(")]
    expected = sorted(set(np.array(capture_days(zoolake["capture_time"]), dtype=object)[in_2020]))
    for _, group in days.groupby(["method", "counting"]):
        assert sorted(group["sample"]) == expected
        assert group["n"].sum() == 75
    markdown = (results / "tables" / "quantification.md").read_text()
    assert re.search(r"\| zoolake/2018\+2019→2020 +\| diffusion +\| emq +\|", markdown), markdown
    assert "Class counts under shift" in report.read_text()
    assert_every_stage_reused(config, tmp_path / "results")
