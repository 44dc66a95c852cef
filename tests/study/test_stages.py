"""The stage cache reuses a finished stage, unless the files it wrote beside its record are gone."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from plankdiff.study.stages import StageCache, StaleStage


def test_a_stage_whose_output_folder_is_gone_runs_again(tmp_path: Path):
    cache = StageCache(tmp_path / "stages", dry_run=False, console=Console(quiet=True))
    out = tmp_path / "probe"
    calls = []

    def run():
        calls.append(1)
        out.mkdir(exist_ok=True)
        return len(calls)

    assert cache("probe/x", {"a": 1}, run, outputs=out) == 1
    assert cache("probe/x", {"a": 1}, run, outputs=out) == 1  # reused: its folder is there
    out.rmdir()
    assert cache("probe/x", {"a": 1}, run, outputs=out) == 2
    assert [status for _, status in cache.planned] == ["run", "reuse", "run"]


def test_a_recorded_stage_its_check_finds_stale_is_refused_in_a_dry_run_too(tmp_path: Path):
    out = tmp_path / "backbone"
    calls = []

    def run():
        calls.append(1)
        out.mkdir(exist_ok=True)
        return len(calls)

    for dry_run in (False, True):
        cache = StageCache(tmp_path / "stages", dry_run=dry_run, console=Console(quiet=True))
        assert cache("train/x", {"a": 1}, run, outputs=out, verify=lambda folder: None) == 1
        with pytest.raises(
            StaleStage, match=rf"^stage train/x: lr differs; not reused: delete {out} to run it again$"
        ):
            cache("train/x", {"a": 1}, run, outputs=out, verify=lambda folder: "lr differs")
        assert [status for _, status in cache.planned] == (["reuse"] if dry_run else ["run"])
    assert calls == [1]  # neither reused nor run again: the caller decides what to delete


def _trained(work: Path, *, dry_run: bool = False, donors=()) -> tuple[StageCache, Path, list]:
    """A study's cache under `work` and a backbone stage that writes `runs/x/weights.txt`."""
    cache = StageCache(work / "stages", dry_run=dry_run, console=Console(quiet=True), donors=donors)
    return cache, work / "runs" / "x", []


def _train(out: Path, calls: list, text: str):
    def run():
        calls.append(text)
        out.mkdir(parents=True, exist_ok=True)
        (out / "weights.txt").write_text(text)
        return {"steps": len(calls)}

    return run


def test_a_shareable_stage_another_study_finished_with_the_same_key_is_copied_not_run(tmp_path: Path):
    donor, donor_out, donor_calls = _trained(tmp_path / "cpu")
    donor("pretrain/seed0/ndsb/simclr", {"a": 1}, _train(donor_out, donor_calls, "cpu"), outputs=donor_out)

    cache, out, calls = _trained(tmp_path / "ablation", donors=[tmp_path / "cpu" / "stages"])
    result = cache(
        "pretrain/seed0/ndsb/simclr", {"a": 1}, _train(out, calls, "ablation"), outputs=out, shareable=True
    )
    assert calls == [] and result == {"steps": 1}
    assert (out / "weights.txt").read_text() == "cpu"
    assert not (out / "weights.txt").samefile(donor_out / "weights.txt")  # a copy, not a link
    record = cache.record("pretrain/seed0/ndsb/simclr")
    assert record.exists() and "copied_from" in record.read_text()
    # From now on the copy is this study's own: reused, even once the donor's folder is gone.
    (donor_out / "weights.txt").unlink()
    donor_out.rmdir()
    cache("pretrain/seed0/ndsb/simclr", {"a": 1}, _train(out, calls, "ablation"), outputs=out, shareable=True)
    assert calls == [] and [s for _, s in cache.planned] == ["copy", "reuse"]


def test_a_donor_is_ignored_when_its_key_differs_or_the_stage_is_not_shareable(tmp_path: Path):
    donor, donor_out, donor_calls = _trained(tmp_path / "cpu")
    donor("pretrain/seed0/ndsb/simclr", {"a": 1}, _train(donor_out, donor_calls, "cpu"), outputs=donor_out)
    donors = [tmp_path / "cpu" / "stages"]

    cache, out, calls = _trained(tmp_path / "other", donors=donors)
    cache("pretrain/seed0/ndsb/simclr", {"a": 2}, _train(out, calls, "other"), outputs=out, shareable=True)
    assert calls == ["other"] and (out / "weights.txt").read_text() == "other"

    cache, out, calls = _trained(tmp_path / "third", donors=donors)
    cache("pretrain/seed0/ndsb/simclr", {"a": 1}, _train(out, calls, "third"), outputs=out)
    assert calls == ["third"]


def test_a_dry_run_plans_the_copy_and_copies_nothing(tmp_path: Path):
    donor, donor_out, donor_calls = _trained(tmp_path / "cpu")
    donor("pretrain/seed0/ndsb/dino", {"a": 1}, _train(donor_out, donor_calls, "cpu"), outputs=donor_out)
    cache, out, calls = _trained(tmp_path / "ablation", dry_run=True, donors=[tmp_path / "cpu" / "stages"])
    cache("pretrain/seed0/ndsb/dino", {"a": 1}, _train(out, calls, "x"), outputs=out, shareable=True)
    assert cache.planned == [("pretrain/seed0/ndsb/dino", "copy")]
    assert not out.exists() and not (tmp_path / "ablation" / "stages").exists()


def test_a_donor_its_check_rejects_is_passed_over_and_the_stage_runs(tmp_path: Path):
    donor, donor_out, donor_calls = _trained(tmp_path / "cpu")
    donor("pretrain/seed0/ndsb/mae", {"a": 1}, _train(donor_out, donor_calls, "cpu"), outputs=donor_out)
    cache, out, calls = _trained(tmp_path / "ablation", donors=[tmp_path / "cpu" / "stages"])
    checked = []

    def verify(folder: Path) -> str | None:
        checked.append(folder)
        return "trained on split a, this study's is b" if folder == donor_out else None

    result = cache(
        "pretrain/seed0/ndsb/mae",
        {"a": 1},
        _train(out, calls, "x"),
        outputs=out,
        shareable=True,
        verify=verify,
    )
    assert calls == ["x"] and result == {"steps": 1} and (out / "weights.txt").read_text() == "x"
    assert checked == [donor_out] and "copied_from" not in cache.record("pretrain/seed0/ndsb/mae").read_text()
