"""The stage cache reuses a finished stage, unless the files it wrote beside its record are gone."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from plankdiff.study.stages import StageCache


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
