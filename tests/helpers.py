"""Helpers the tests import (`from helpers import …`): reading and subsetting the shared zips, a
prepared dataset of crafted labels and a feature store of crafted features, and killing a child
process at a random point. Kept out of conftest.py because tests/deploy has a
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

import numpy as np
import pandas as pd

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


def fake_prepared(
    root: Path,
    labels: list[str],
    capture_times: list[str] | None = None,
    *,
    paths: list[str] | None = None,
    source_hash: str = "s",
):
    """A real prepared-dataset folder (prepare.json, images.npy, meta.csv) for crafted labels and
    times; its images are blank, for code that reads only labels, rows and features."""
    from plankdiff.data.prepare import PreparedDataset
    from plankdiff.provenance import save_npy, write_json

    classes = sorted(set(labels))
    root.mkdir(parents=True)
    save_npy(root / "images.npy", np.zeros((len(labels), 1, 8, 8), np.uint8))
    pd.DataFrame(
        {
            "path": paths or [f"{label}/{i}.png" for i, label in enumerate(labels)],
            "label": labels,
            "class_index": [classes.index(label) for label in labels],
            "capture_time": capture_times or [""] * len(labels),
        }
    ).to_csv(root / "meta.csv", index=False)
    info = {"name": root.name, "key": root.name, "classes": classes, "n_skipped": 0}
    write_json(root / "prepare.json", info | {"source_hash": source_hash})
    return PreparedDataset(root)


def write_store(dataset, root: Path, features: dict[str, np.ndarray]):
    """A complete feature store of `dataset`'s every row whose pairs (names as `<block>` or
    `<block>/t=<t>`) hold the given `[len(dataset), D]` features, stored as float16 like extraction's."""
    from plankdiff.features.pairs import Pair
    from plankdiff.features.store import FeatureStore

    rows = np.arange(len(dataset))
    pairs = [Pair.parse(name) for name in features]
    info = {
        "dataset": dataset.name,
        "dataset_root": str(dataset.root),
        "dataset_key": dataset.key,
        "rows": rows.tolist(),
        "pairs": [{"name": p.name, "block": p.block, "t": p.t} for p in pairs],
    }
    store = FeatureStore.create(root, info, {name: x.shape[1] for name, x in features.items()})
    arrays = store.open_arrays()
    for name, x in features.items():
        arrays[name][:] = x.astype(np.float16)
        arrays[name].flush()
    store.mark_done(len(rows))
    return store


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


def load_script(name: str):
    """scripts/<name>.py as a module (the scripts are not a package), registered in sys.modules so
    that dataclasses and pickling inside it resolve their module."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
