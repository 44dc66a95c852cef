"""A cached backbone is reused only while its preset or recipe still gives the settings it trained
with: the stage key hashes the preset's name and the method's name, not what they resolve to."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import pytest
from rich.console import Console

from plankdiff.baselines.supervised import Supervised
from plankdiff.provenance import read_json, write_json
from plankdiff.study.config import ExperimentConfig, load_experiment
from plankdiff.study.plan import plan_replicate
from plankdiff.study.pretrain import baseline_inputs, stale_baseline
from plankdiff.study.runner import Study
from plankdiff.study.stages import StaleStage


def run_folder(config: ExperimentConfig, work: Path, method: str) -> Path:
    return work / config.name / "runs" / "seed0" / "mine" / method


def pretrain(config: ExperimentConfig, work: Path, *, dry_run: bool) -> Study:
    """Prepare and pre-train every backbone of `config` (or, in a dry run, plan it), nothing after."""
    study = Study(
        config, results_root=work / "results", work_root=work, dry_run=dry_run, console=Console(quiet=True)
    )
    study._prepare()
    for seed in config.seeds:
        replicate = plan_replicate(config, study.datasets, seed)
        study._save_splits(replicate)
        study._pretrain(replicate)
    return study


@pytest.fixture(scope="module")
def trained(small_ndsb_zip: Path, tmp_path_factory: pytest.TempPathFactory):
    """(config, work folder): a DDPM on a preset file of its own and a supervised ResNet, pre-trained."""
    folder = tmp_path_factory.mktemp("stale")
    preset = folder / "preset.yaml"  # the `tiny` preset, as a file a test may edit
    preset.write_text((resources.files("plankdiff") / "configs" / "diffusion" / "tiny.yaml").read_text())
    config = ExperimentConfig.model_validate(
        {
            "name": "stale",
            "experiments": [{"pretrain": "mine"}],
            "seeds": [0],
            "datasets": {"mine": {"source": str(small_ndsb_zip), "size": 16}},
            "pretrain": {"mine": {"dataset": "mine", "split": "long-tailed"}},
            "diffusion": {"preset": str(preset), "max_tflops": 1, "samples": 0},  # its 6 steps
            # One step; a ResNet-18 at its width of 64 leaves a 130 MB run folder, at 8 about 2 MB.
            "baselines": {"methods": ["supervised"], "max_tflops": 0.001, "width": 8},
            "training_precision": "fp32",
        }
    )
    pretrain(config, folder / "work", dry_run=False)
    return config, folder / "work"


def test_a_dry_run_reuses_the_backbones_and_writes_no_split(trained):
    config, work = trained
    study = pretrain(config, work, dry_run=True)
    assert [(n, s) for n, s in study.plan() if n.startswith("pretrain/")] == [
        ("pretrain/seed0/mine/diffusion", "reuse"),
        ("pretrain/seed0/mine/supervised", "reuse"),
    ]
    splits = study.datasets["mine"].root / "splits"
    saved = {p.name: p.stat().st_mtime_ns for p in splits.iterdir()}
    pretrain(config, work, dry_run=True)
    # A dry run may be pointed at the cache of a running study, which reads these files.
    assert {p.name: p.stat().st_mtime_ns for p in splits.iterdir()} == saved


def test_an_edited_preset_refuses_its_cached_backbone_naming_the_field(trained):
    config, work = trained
    preset = Path(config.diffusion.preset)
    original = preset.read_text()
    try:
        preset.write_text(original.replace("lr: 1.0e-3", "lr: 2.0e-3"))
        for dry_run in (True, False):
            with pytest.raises(StaleStage) as refused:
                pretrain(config, work, dry_run=dry_run)
            message = str(refused.value)
            assert "\n" not in message
            assert message.startswith("stage pretrain/seed0/mine/diffusion: ")
            assert "(train.lr: 0.001 → 0.002)" in message
            assert message.endswith(f"delete {run_folder(config, work, 'diffusion')} to run it again")
        # A setting that changes only how a run reports is not a reason to train again.
        preset.write_text(original.replace("log_every: 1", "log_every: 5"))
        pretrain(config, work, dry_run=True)
    finally:
        preset.write_text(original)


def test_a_changed_baseline_recipe_refuses_its_cached_backbone(trained, monkeypatch):
    config, work = trained
    monkeypatch.setattr(Supervised, "lr", Supervised.lr / 2)
    with pytest.raises(StaleStage, match=r"^stage pretrain/seed0/mine/supervised: .*\(lr: 0\.002 → 0\.001\)"):
        pretrain(config, work, dry_run=True)


def test_deleting_a_refused_backbone_trains_it_again(trained, tmp_path, monkeypatch):
    config, work = trained
    work = shutil.copytree(work, tmp_path / "work")
    monkeypatch.setattr(Supervised, "lr", Supervised.lr / 2)
    shutil.rmtree(run_folder(config, work, "supervised"))  # as the refusal says
    study = pretrain(config, work, dry_run=True)
    assert ("pretrain/seed0/mine/supervised", "run") in study.plan()


def test_the_width_reaches_the_trained_backbone(trained):
    config, work = trained
    folder = run_folder(config, work, "supervised")
    assert read_json(folder / "baseline.json")["config"]["width"] == 8
    written = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert written < 10e6, f"{folder} holds {written / 1e6:.0f} MB"  # 130 MB at the recipe's width 64


@pytest.mark.parametrize(("method", "own"), [("simclr", 64), ("mae", 192)])
def test_a_baseline_key_holds_the_width_only_where_it_is_not_the_methods_own(method, own):
    """Backbones cached before `baselines.width` existed keep their key (the 3-seed `cpu` study's):
    the width joins it only where it changes the network, as `precision` does only when not fp32."""
    pretraining = {"dataset": "ndsb-key", "rows": "rows-hash", "seed": 0}

    def inputs(*overrides: str) -> dict:
        config = load_experiment("cpu", overrides=[f"baselines.methods=[{method}]", *overrides])
        return baseline_inputs(config, pretraining, method)

    before = pretraining | {"method": method, "minutes": None, "tflops": 25.0}  # as keyed until now
    assert inputs() == inputs(f"baselines.width={own}") == before
    assert inputs("baselines.width=12") == before | {"width": 12}
    assert inputs("baselines.batch_size=32") == before | {"batch_size": 32}


def test_another_study_with_the_same_backbones_copies_them_instead_of_training(trained, tmp_path):
    config, work = trained
    work = shutil.copytree(work, tmp_path / "work")
    twin = config.model_copy(update={"name": "twin"})
    # Its own preparation of the same images (a dry run stops before pre-training without one).
    Study(twin, results_root=work / "results", work_root=work, console=Console(quiet=True))._prepare()
    planned = pretrain(twin, work, dry_run=True).plan()
    assert [(n, s) for n, s in planned if n.startswith("pretrain/")] == [
        ("pretrain/seed0/mine/diffusion", "copy"),
        ("pretrain/seed0/mine/supervised", "copy"),
    ]
    study = pretrain(twin, work, dry_run=False)
    assert [s for n, s in study.plan() if n.startswith("pretrain/")] == ["copy", "copy"]
    for method in ("diffusion", "supervised"):
        copied, original = run_folder(twin, work, method), run_folder(config, work, method)
        assert sorted(p.relative_to(copied) for p in copied.rglob("*")) == sorted(
            p.relative_to(original) for p in original.rglob("*")
        )
        record = read_json(work / "twin" / "stages" / f"pretrain_seed0_mine_{method}.json")
        assert record["copied_from"].endswith(f"stale/stages/pretrain_seed0_mine_{method}.json")
    assert [s for n, s in pretrain(twin, work, dry_run=True).plan() if n.startswith("pretrain/")] == [
        "reuse",
        "reuse",
    ]


def test_a_baseline_trained_under_another_split_name_is_stale_for_this_study(trained, tmp_path):
    config, work = trained
    folder = shutil.copytree(run_folder(config, work, "supervised"), tmp_path / "supervised")
    study = pretrain(config, work, dry_run=True)
    split = plan_replicate(config, study.datasets, 0).pretrain["mine"][1]
    assert stale_baseline(config, folder, "supervised", 0, split=split) is None
    record = read_json(folder / "baseline.json")
    write_json(folder / "baseline.json", {**record, "split": "long-tailed-s0-other"})
    assert stale_baseline(config, folder, "supervised", 0, split=split) == (
        f"{folder} was trained on split long-tailed-s0-other, this study's is {split.name}"
    )
