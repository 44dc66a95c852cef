"""Helpers the tests import (`from helpers import …`): reading and subsetting the shared zips, and
killing a child process at a random point. Kept out of conftest.py because tests/deploy has a
conftest.py of its own, and `from conftest import` would then reach whichever was loaded first."""

from __future__ import annotations

import csv
import io
import os
import random
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

SHARED_DATASETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"


def read_manifest(archive: Path, name: str) -> list[dict[str, str]]:
    """The rows of `<name>/manifest.csv` inside one of the shared zips."""
    with zipfile.ZipFile(archive) as source:
        text = source.read(f"{name}/manifest.csv").decode("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def subset_zip(archive: Path, name: str, out: Path, *, n_classes: int, per_class: int) -> Path:
    """Copy `per_class` real images of the first `n_classes` classes (sorted) that have that many,
    into a zip with the same layout as the shared ones: `<name>/<class>/<file>` and a manifest."""
    rows = read_manifest(archive, name)
    by_class: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_class.setdefault(row["label"], []).append(row)
    chosen = [label for label in sorted(by_class) if len(by_class[label]) >= per_class][:n_classes]
    assert len(chosen) == n_classes, f"{archive}: fewer than {n_classes} classes with {per_class} images"
    kept = [row for label in chosen for row in sorted(by_class[label], key=lambda r: r["path"])[:per_class]]
    return write_subset_zip(archive, name, kept, out)


def write_subset_zip(archive: Path, name: str, rows: list[dict[str, str]], out: Path) -> Path:
    """Copy the images of manifest `rows` from a shared zip into `out`, same layout and manifest."""
    manifest = io.StringIO()
    writer = csv.DictWriter(manifest, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for row in rows:
            target.writestr(f"{name}/{row['path']}", source.read(f"{name}/{row['path']}"))
        target.writestr(f"{name}/manifest.csv", manifest.getvalue())
    return out


@dataclass
class Killed:
    """A child process stopped by `kill_9_at_a_random_point`."""

    delay: float  # seconds between its `ready` line and the SIGKILL (say it when a test fails)
    descendants: list  # psutil.Process of every process it had started, as they were at the kill
    finished: bool  # it exited on its own before the kill came
    output: str  # what it printed besides `ready`


def kill_9_at_a_random_point(
    script: str, *args: str | Path, ready: str, within: float, env: dict[str, str] | None = None
) -> Killed:
    """Run `python -c script args…` with this checkout's sources on the path; once it prints the
    line `ready` (other lines may come before), wait a random time in [0, `within`) seconds and SIGKILL it: no handler runs, no
    final checkpoint is written, as when a machine's OOM killer or a scheduler ends a job.
    `within` is how long the uninterrupted work takes, so the kill lands anywhere inside it."""
    import psutil

    import plankdiff

    child = subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(Path(plankdiff.__file__).parents[1])} | (env or {}),
    )
    output: list[str] = []
    for line in child.stdout:
        if line.strip() == ready:
            break
        output.append(line)
    else:
        raise AssertionError(f"child exited without printing {ready!r}: {''.join(output)}")
    # Drained on the side: a child blocked on a full pipe would not be killed at a random point of its work.
    drain = threading.Thread(target=lambda: output.extend(child.stdout), daemon=True)
    drain.start()
    delay = random.Random().uniform(0, within)
    time.sleep(delay)
    descendants = psutil.Process(child.pid).children(recursive=True) if child.poll() is None else []
    finished = child.poll() is not None
    child.kill()
    child.wait()
    drain.join(timeout=10)  # descendants that outlive it may hold the pipe open
    return Killed(delay=delay, descendants=descendants, finished=finished, output="".join(output))
