"""scripts/gpu_check.sh wires the cut-down `gpu` study and the throughput benchmark: run with a stub
Python that records its command lines (nothing trains), and refuses a missing NDSB archive in one line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.sh"


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    stub = tmp_path / "python"
    stub.write_text(f'#!/usr/bin/env bash\necho "$*" >> {tmp_path / "calls.log"}\n')
    stub.chmod(0o755)
    env = os.environ | {"PYTHON": str(stub), "PLANKDIFF_CACHE": str(tmp_path / "cache")}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=tmp_path)


def test_the_study_gets_the_cut_down_overrides_then_the_callers(tmp_path):
    archive = tmp_path / "ndsb.zip"
    archive.write_bytes(b"")
    done = run(tmp_path, "out", "ndsb.zip", "--set", "seeds=[1]")
    assert done.returncode == 0, done.stderr
    study = next(line for line in (tmp_path / "calls.log").read_text().splitlines() if " run gpu " in line)
    assert study.startswith(f"-m plankdiff.cli run gpu --results {tmp_path / 'out' / 'results'} ")
    assert f"--set datasets.ndsb.source={archive}" in study  # made absolute
    assert "--set diffusion.max_minutes=1.0" in study and "--set experiments=[ndsb]" in study
    assert study.index("--set seeds=[0]") < study.index("--set seeds=[1]")  # the caller's wins
    environment = (tmp_path / "out" / "environment.txt").read_text()
    assert "study: exit 0" in environment
    assert "bench: not run (the study prepared no long-tailed split)" in environment


def test_the_benchmark_runs_on_the_split_the_study_prepared(tmp_path):
    (tmp_path / "ndsb.zip").write_bytes(b"")
    splits = tmp_path / "cache" / "prepared" / "gpu-ndsb-64" / "splits"
    splits.mkdir(parents=True)
    (splits / "long-tailed-s0-cap60.json").write_text("{}")
    assert run(tmp_path, "out", "ndsb.zip").returncode == 0
    bench = next(line for line in (tmp_path / "calls.log").read_text().splitlines() if "bench_" in line)
    assert "--data gpu-ndsb-64 --split long-tailed-s0-cap60 --preset paper" in bench


def test_a_missing_archive_is_refused_in_one_line(tmp_path):
    done = run(tmp_path, "out", "nowhere.zip")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["scripts/gpu_check.sh: nowhere.zip: no such file"]
    assert not (tmp_path / "calls.log").exists()
