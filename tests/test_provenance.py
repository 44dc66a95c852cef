import subprocess
from pathlib import Path

from plankdiff.provenance import git_sha


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_git_sha_is_the_commit_the_process_started_with(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one")
    git(tmp_path, "add", "a.txt")
    git(tmp_path, "commit", "-qm", "one")
    first = git(tmp_path, "rev-parse", "HEAD")
    assert git_sha(tmp_path) == first
    (tmp_path / "a.txt").write_text("two")
    git(tmp_path, "commit", "-qam", "two")  # a commit made while a long run is going on
    assert git(tmp_path, "rev-parse", "HEAD") != first and git_sha(tmp_path) == first


def test_git_sha_outside_a_repository_is_unknown(tmp_path):
    assert git_sha(tmp_path / "nowhere") == "unknown"
