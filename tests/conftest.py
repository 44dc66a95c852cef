"""Shared fixtures: small real subsets of the shared datasets, one prepared dataset, one tiny run.

Everything is written under pytest's temporary folders: never into ../shared, the repository,
./cache or ./runs. Tests that need the real datasets skip when ../shared/datasets is absent.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import SHARED_DATASETS, subset_zip

# Torch on 2 shared cores (set before torch is imported): one thread keeps the tests from
# fighting the background jobs for the CPU, and makes timings steadier.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """`PLANKDIFF_CACHE` points at a temporary folder for the whole session: nothing lands in ./cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PLANKDIFF_CACHE", str(tmp_path_factory.mktemp("plankdiff-cache")))
        yield


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not (SHARED_DATASETS / "ndsb.zip").is_file():
        pytest.skip("../shared/datasets not found: data tests skipped")
    return SHARED_DATASETS.resolve()


@pytest.fixture(scope="session")
def small_ndsb_zip(shared_datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 NDSB classes × 12 real images (48), zipped like the original."""
    out = tmp_path_factory.mktemp("small-ndsb") / "ndsb.zip"
    return subset_zip(shared_datasets / "ndsb.zip", "ndsb", out, n_classes=4, per_class=12)


@pytest.fixture(scope="session")
def small_zoolake_zip(shared_datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 ZooLake classes × 10 real images (30), zipped like the original."""
    out = tmp_path_factory.mktemp("small-zoolake") / "zoolake.zip"
    return subset_zip(shared_datasets / "zoolake.zip", "zoolake", out, n_classes=3, per_class=10)


@pytest.fixture(scope="session")
def prepared_small_ndsb(small_ndsb_zip: Path, tmp_path_factory: pytest.TempPathFactory):
    """The small NDSB subset prepared at 16×16 (read-only for tests: copy it before writing splits)."""
    from plankdiff.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "ndsb-small"
    return prepare(small_ndsb_zip, name="ndsb-small", size=16, out_dir=out, workers=2, show_progress=False)


@pytest.fixture
def ndsb_copy(prepared_small_ndsb, tmp_path: Path):
    """A private copy of the prepared subset, for tests that write into the dataset folder."""
    from plankdiff.data.prepare import PreparedDataset

    return PreparedDataset(shutil.copytree(prepared_small_ndsb.root, tmp_path / "ndsb-small"))


@pytest.fixture
def store_and_split(ndsb_copy, tmp_path: Path):
    """(dataset, raw-pixel feature store, saved long-tailed split) on a private copy of the subset:
    a real store to probe in well under a second."""
    import numpy as np

    from plankdiff.data.splits import long_tailed_split
    from plankdiff.features.raw import raw_pixel_store

    split = long_tailed_split(ndsb_copy, seed=0)
    split.save(ndsb_copy)
    every = np.concatenate([split.indices(p) for p in ("train", "val", "test")])
    store = raw_pixel_store(ndsb_copy, rows=every, out=tmp_path / "raw")
    return ndsb_copy, store, split


@pytest.fixture(scope="session")
def make_trainer() -> Callable:
    """`make_trainer(dataset, out, resume=False, **train_overrides)`: a `tiny` trainer whose weight
    initialisation is seeded, so two fresh trainers start from the same weights."""
    import torch

    from plankdiff.diffusion.config import load_config
    from plankdiff.diffusion.train import DiffusionTrainer

    def make(dataset, out: Path, *, resume: bool = False, **overrides):
        torch.manual_seed(0)
        config = load_config("tiny", **overrides)
        return DiffusionTrainer(config=config, dataset=dataset, out=out, resume=resume, show_progress=False)

    return make


@pytest.fixture(scope="session")
def tiny_run(prepared_small_ndsb, make_trainer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `tiny` preset trained for its 6 steps (checkpoints at 3 and 6) on the prepared subset."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = make_trainer(prepared_small_ndsb, out).train()
    assert (result.step, result.stopped_by) == (6, "steps")
    return out


@pytest.fixture
def sigterm_during_step_two(monkeypatch) -> Callable:
    """`sigterm_during_step_two(trainer)`: the trainer's process receives SIGTERM while its second
    training step runs, as from `kill` or a job scheduler; shared by the DDPM and baseline trainers."""

    def arm(trainer) -> None:
        real_step = trainer.train_step

        def step_then_terminate(batch):
            loss = real_step(batch)
            if trainer.step == 1:  # counted after this call returns: the signal lands during step 2
                os.kill(os.getpid(), signal.SIGTERM)
            return loss

        monkeypatch.setattr(trainer, "train_step", step_then_terminate)

    return arm
