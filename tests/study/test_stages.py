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
        assert cache("train/x", {"a": 1}, run, outputs=out, verify=lambda: None) == 1
        with pytest.raises(
            StaleStage, match=rf"^stage train/x: lr differs; not reused: delete {out} to run it again$"
        ):
            cache("train/x", {"a": 1}, run, outputs=out, verify=lambda: "lr differs")
        assert [status for _, status in cache.planned] == (["reuse"] if dry_run else ["run"])
    assert calls == [1]  # neither reused nor run again: the caller decides what to delete
