"""scripts/shift_alarm_check.py: the clean and shifted test zips of a fixed sample of a split's test
images, and the alarm rates of predictions drawn into random samples and the input's own."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import load_script
from plankdiff.data.prepare import PreparedDataset
from plankdiff.data.splits import Split, long_tailed_split
from plankdiff.deploy.calibrate import OpenSet
from plankdiff.deploy.export import UNKNOWN
from plankdiff.evaluation.processing_shift import SHIFT_NAMES, split_test_paths


@pytest.fixture(scope="module")
def script():
    return load_script("shift_alarm_check")


def test_test_zips_hold_the_same_drawn_test_images_clean_and_shifted(script, prepared_small_ndsb, tmp_path):
    dataset = PreparedDataset(shutil.copytree(prepared_small_ndsb.root, tmp_path / "data"))
    split = long_tailed_split(dataset)
    split.save(dataset)
    zips = script.test_zips(dataset.root, split.name, n=5, seed=0, out=tmp_path / "zips")
    assert list(zips) == ["clean", *SHIFT_NAMES]
    test_paths = {
        str(Path(p).with_suffix(".png")) for p in split_test_paths(dataset, Split.load(dataset, split.name))
    }
    members = {}
    for shift, path in zips.items():
        with zipfile.ZipFile(path) as archive:
            members[shift] = sorted(
                n.split("/", 1)[1] for n in archive.namelist() if not n.endswith("manifest.csv")
            )
    assert len(members["clean"]) == 5 and set(members["clean"]) <= test_paths
    assert all(m == members["clean"] for m in members.values())  # every shift of the same images
    again = script.test_zips(dataset.root, split.name, n=5, seed=0, out=tmp_path / "again")
    assert again["clean"].read_bytes() == zips["clean"].read_bytes()  # fixed by the seed
    other = script.test_zips(dataset.root, split.name, n=5, seed=1, out=tmp_path / "other")
    assert other["clean"].read_bytes() != zips["clean"].read_bytes()
    # Through the command line, as the docs run it.
    arguments = ["test-zips", "--dataset", str(dataset.root), "--split", split.name, "--n", "5"]
    assert (
        script.main([*arguments, "--out", str(tmp_path / "chain"), "--chain", "grey-background+corner-disc"])
        == 0
    )
    chained = {p.stem.removeprefix(f"{dataset.name}-test-"): p for p in (tmp_path / "chain").glob("*.zip")}
    assert set(chained) == {"clean", *SHIFT_NAMES, "grey-background+corner-disc"}
    with zipfile.ZipFile(chained["grey-background+corner-disc"]) as archive:
        assert len([n for n in archive.namelist() if not n.endswith("manifest.csv")]) == 5
    with pytest.raises(ValueError, match="'glare' is not a shift"):
        script.test_zips(dataset.root, split.name, n=5, seed=0, out=tmp_path / "bad", chains=("jpeg+glare",))
    with pytest.raises(ValueError, match="at least one"):
        script.test_zips(dataset.root, split.name, n=0, seed=0, out=tmp_path / "none")


def predictions(n: int, unknown_share: float, *, samples: int = 1, seed: int = 0) -> pd.DataFrame:
    """Every image truly a copepod (half of them labelled in a class the classifier lacks), its
    top-1 right for every other image."""
    rng = np.random.default_rng(seed)
    decisions = np.where(rng.random(n) < unknown_share, UNKNOWN, "copepod")
    return pd.DataFrame(
        {
            "sample": [f"bin{i % samples}" for i in range(n)],
            "decision": decisions,
            "top1": ["copepod" if i % 2 else "salp" for i in range(n)],
            "true_label": ["copepod" if i % 4 < 2 else "unseen" for i in range(n)],
        }
    )


def test_alarm_rows_flag_shifted_samples_and_not_validation_like_ones(script):
    cut = OpenSet(method="energy", keep=0.95, threshold=0.0, val_kept=0.95, n_val=3000)
    usual = script.alarm_rows(
        predictions(4000, 0.05),
        cut,
        name="clean",
        sample_size=200,
        samples=20,
        seed=0,
        classes=("copepod", "salp"),
    )
    assert usual[0]["top1_accuracy"] == 0.5  # over the labelled copepods only, not the unseen class
    assert [r["samples_of"] for r in usual] == ["200"]  # one sample of its own: no "own" row
    assert usual[0]["n_samples"] == 20 and usual[0]["n_images"] == 4000
    assert usual[0]["alarmed_share"] == 0.0 and abs(usual[0]["unknown_share"] - 0.05) < 0.01
    shifted = script.alarm_rows(
        predictions(4000, 0.3, samples=4), cut, name="other", sample_size=200, samples=5, seed=0
    )
    own, drawn = shifted
    assert own["samples_of"] == "own" and own["n_samples"] == 4 and own["alarmed_share"] == 1.0
    assert drawn["n_samples"] == 5 and drawn["n_images"] == 1000 and drawn["alarmed_share"] == 1.0
    assert drawn["median_p"] <= drawn["max_p"] < 1e-3 < usual[0]["median_p"] <= usual[0]["max_p"]
    # Fewer images than one sample: only the input's own samples are scored.
    few = script.alarm_rows(
        predictions(50, 0.3, samples=2), cut, name="few", sample_size=200, samples=5, seed=0
    )
    assert [r["samples_of"] for r in few] == ["own"]


def test_rates_refuses_bad_options_and_missing_classifiers_in_one_line(script, tmp_path, capsys):
    assert (
        script.main(["rates", "--model", str(tmp_path / "nope"), "--out", str(tmp_path), str(tmp_path)]) == 2
    )
    assert capsys.readouterr().err.startswith("error: ")
    assert (
        script.main(
            ["rates", "--model", str(tmp_path), "--sample-size", "0", "--out", str(tmp_path), str(tmp_path)]
        )
        == 2
    )
    assert "--sample-size" in capsys.readouterr().err
