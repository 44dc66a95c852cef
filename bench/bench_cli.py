"""Benchmark: wall time of `plankdiff --help` and two verbs' `--help`, this tree against an older
commit (by default dc911de, before the CLI imported the library lazily), as a ratio.

Run by hand (not collected by pytest), from the repository root:

    git worktree add /tmp/cli-old dc911de
    .venv/bin/python bench/bench_cli.py --old /tmp/cli-old
    git worktree remove /tmp/cli-old

Each command is a fresh `python -m plankdiff.cli …` process (what a person typing it pays:
interpreter start, imports, help rendering), its sources first on PYTHONPATH; median of `--runs`
runs each, new and old interleaved so that a change in machine load hits both. The load average
(`uptime`) before and after is recorded: the machine is shared. Writes `bench/results/cli.md`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from plankdiff.provenance import git_sha

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (("--help",), ("diffusion", "train", "--help"), ("predict", "--help"))


def seconds(tree: Path, args: tuple[str, ...]) -> float:
    env = os.environ | {"PYTHONPATH": str(tree / "src")}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "plankdiff.cli", *args], env=env, check=True, capture_output=True, cwd=tree
    )
    return time.perf_counter() - started


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="checkout of the old commit")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cli.md")
    args = parser.parse_args()
    old_sha = git_sha(args.old.resolve())
    load_before = uptime()
    rows = []
    for command in COMMANDS:
        times: dict[str, list[float]] = {"new": [], "old": []}
        for _ in range(args.runs):
            times["new"].append(seconds(ROOT, command))
            times["old"].append(seconds(args.old, command))
        new, old = statistics.median(times["new"]), statistics.median(times["old"])
        rows.append((" ".join(("plankdiff", *command)), new, old, times))
        print(f"{rows[-1][0]}: new {new:.2f} s, old {old:.2f} s, {old / new:.1f}x", flush=True)
    load_after = uptime()
    lines = [
        "# CLI start-up: `--help` wall time",
        "",
        f"`{' '.join([Path(sys.executable).name, *sys.argv])}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared), Python "
        f"{platform.python_version()}; new = {git_sha(ROOT)} (this tree), old = {old_sha}.",
        "",
        "Each run is a fresh `python -m plankdiff.cli …` process; median of "
        f"{args.runs} runs, new and old interleaved.",
        "",
        "| command | new (s) | old (s) | old / new | new runs (s) | old runs (s) |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name, new, old, times in rows:
        lines.append(
            f"| `{name}` | {new:.2f} | {old:.2f} | {old / new:.1f}× | "
            f"{', '.join(f'{t:.2f}' for t in times['new'])} | {', '.join(f'{t:.2f}' for t in times['old'])} |"
        )
    lines += [
        "",
        "Load on the cores (other sessions share them):",
        "",
        f"- before: `{load_before}`",
        f"- after: `{load_after}`",
        "",
        "Old: every verb module imported the library at module level, and the package `__init__`s "
        "imported their submodules, so `--help` loaded torch, diffusers, lightly, scikit-learn and "
        "pandas. New: the verbs import the library inside the commands, package `__init__`s re-export "
        "lazily (PEP 562), and `tests/test_cli.py` checks that `import plankdiff.cli` loads none of torch, "
        "diffusers, lightly, scikit-learn, matplotlib.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
