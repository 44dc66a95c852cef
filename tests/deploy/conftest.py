"""Fixtures shared by the deploy tests: one small dataset, feature store and exported classifier
for the whole package (exporting takes seconds; every test module reuses it)."""

from __future__ import annotations

import importlib
import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from deploy_common import PAIRS, SPLIT
from rich.console import Console
from typer.testing import CliRunner

from plankdiff.cli import app
from plankdiff.data.prepare import PreparedDataset
from plankdiff.data.splits import long_tailed_split
from plankdiff.diffusion.model import load_backbone
from plankdiff.features.extract import ExtractionRequest, extract_features, model_hash


@pytest.fixture
def run_cli(monkeypatch):
    """`plankdiff …` in-process, with a console wide enough not to wrap messages."""
    monkeypatch.setattr(
        importlib.import_module("plankdiff.deploy.cli"), "console", Console(width=400, color_system=None)
    )

    def run(*args: str | Path):
        return CliRunner().invoke(app, [str(a) for a in args])

    return run


@pytest.fixture(scope="package")
def dataset(prepared_small_ndsb, tmp_path_factory) -> PreparedDataset:
    """A private copy of the prepared subset with a saved long-tailed split (12 images per class)."""
    root = shutil.copytree(prepared_small_ndsb.root, tmp_path_factory.mktemp("deploy-data") / "ndsb-small")
    copy = PreparedDataset(root)
    long_tailed_split(copy).save(copy)
    return copy


@pytest.fixture(scope="package")
def store(tiny_run, dataset, tmp_path_factory):
    unet, scheduler = load_backbone(tiny_run)
    request = ExtractionRequest(timesteps=(5, 10), blocks=("enc2@8", "dec2@16"), batch_size=64)
    out = tmp_path_factory.mktemp("deploy-features") / "store"
    return extract_features(
        unet, scheduler, dataset, out=out, request=request, model_id=model_hash(tiny_run), show_progress=False
    )


@pytest.fixture(scope="package")
def export_args(tiny_run, store, dataset) -> Callable[..., list]:
    """`export_args(backbone=…, features=…)`: a `plankdiff export` command line on the package's
    split and prepared data, to which a test adds its pairs, options and `--out`; the backbone and
    the feature store default to the package's."""

    def args(*, backbone: Path = tiny_run, features: Path = store.root) -> list:
        return [
            "export",
            "--backbone",
            backbone,
            "--features",
            features,
            "--split",
            SPLIT,
            "--data",
            dataset.root,
        ]

    return args


@pytest.fixture(scope="package")
def edit_card() -> Callable[..., Path]:
    """`edit_card(model, edit, copy_to=None)`: the exported classifier `model` (first copied to
    `copy_to`, when given) with its card.json changed in place by `edit(card)`. Nothing else is
    updated, its hashes included: an edit that should pass must recompute them itself."""

    def edited(model: Path, edit: Callable[[dict], object], copy_to: Path | None = None) -> Path:
        folder = Path(shutil.copytree(model, copy_to)) if copy_to is not None else Path(model)
        card = json.loads((folder / "card.json").read_text())
        edit(card)
        (folder / "card.json").write_text(json.dumps(card))
        return folder

    return edited


@pytest.fixture(scope="package")
def model(export_args, tmp_path_factory) -> Path:
    """Exported through the CLI: refit on train, select and calibrate on val, test once. With the
    relative-Mahalanobis open-set score, the one that stores the most arrays beside the probe."""
    out = tmp_path_factory.mktemp("deploy-model") / "model"
    args = [*export_args(), *[a for p in PAIRS for a in ("--pair", p)], "--out", out]
    args += ["--ood", "relative-mahalanobis"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "exported 4 classes" in result.output
    return out


@pytest.fixture(scope="package")
def image_folder(small_ndsb_zip, tmp_path_factory) -> Path:
    """The subset's real image files as `<class>/<file>` (no manifest), plus two unreadable files."""
    root = tmp_path_factory.mktemp("deploy-images") / "ndsb-folder"
    with zipfile.ZipFile(small_ndsb_zip) as archive:
        for name in archive.namelist():
            relative = name.split("/", 1)[1]
            if relative != "manifest.csv":
                (root / relative).parent.mkdir(parents=True, exist_ok=True)
                (root / relative).write_bytes(archive.read(name))
    first_class = sorted(p.name for p in root.iterdir())[0]
    (root / first_class / "broken.jpg").write_bytes(b"this is not a jpeg")
    (root / "empty.png").write_bytes(b"")
    return root
