"""Open-set rejection on a store: the held-out classes never reach the probe, the cut is set on
known-class validation rows, and the test rates count the right images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from plankdiff.cli import app
from plankdiff.data.prepare import prepare
from plankdiff.data.splits import long_tailed_split
from plankdiff.evaluation.open_set import OOD_SCORES, open_set_scores
from plankdiff.features.raw import raw_pixel_store
from plankdiff.probe.ood import held_out_classes

FAST = {"bootstrap": 0, "probe_options": {"epochs": 3, "min_steps": 20}}


@pytest.fixture(scope="module")
def store_and_split(small_ndsb_zip, tmp_path_factory):
    root = tmp_path_factory.mktemp("open-set")
    dataset = prepare(
        small_ndsb_zip, name="open-set", size=16, out_dir=root / "data", workers=1, show_progress=False
    )
    split = long_tailed_split(dataset)
    split.save(dataset)
    return raw_pixel_store(dataset, rows=np.arange(len(dataset)), out=root / "raw"), split, root


def test_held_out_classes_are_rejected_on_test_and_never_probed(store_and_split, tmp_path):
    store, split, _ = store_and_split
    result = open_set_scores(store, split, every=2, keep=0.95, out=tmp_path / "out", **FAST)
    held = held_out_classes(split.classes, every=2)
    assert result.held_out == held and len(held) == 2
    assert set(result.probe.test["confusion"].shape) == {2}  # the probe knows the two other classes only
    assert list(result.table["score"].unique()) == list(OOD_SCORES)
    for part in ("val", "test"):  # validation rows to choose a score on, test rows to measure it
        rows = split.indices(part)
        held_rows = [r for r in rows if split.classes[split.targets[r]] in held]
        table = result.table[result.table["part"] == part].set_index("score")
        assert list(table.index) == list(OOD_SCORES) and len(held_rows) > 0
        assert (table["n_unknown"] == len(held_rows)).all()
        assert (table["n_known"] == len(rows) - len(held_rows)).all()
        for score in OOD_SCORES:
            for column in ("unknown_rejected", "known_kept", "auroc"):
                assert 0 <= table.loc[score, column] <= 1
        if part == "val":  # the cut's own calibration rows keep at least the share asked for
            assert (table["known_kept"] >= 0.95).all()
    record = json.loads((tmp_path / "out" / "open_set.json").read_text())
    assert record["held_out"] == held and record["known_split"] == f"{split.name}-open-set"


def test_the_cut_keeps_the_chosen_share_of_known_validation_images(store_and_split, monkeypatch):
    """keep=1.0 puts the cut at the highest validation score: no validation image is rejected, so
    the cut is at least that score (and it is read from validation, not test)."""
    from plankdiff.evaluation import open_set

    seen = []
    original = open_set.calibrate_threshold
    monkeypatch.setattr(
        open_set, "calibrate_threshold", lambda s, keep: seen.append((s, keep)) or original(s, keep=keep)
    )
    store, split, _ = store_and_split
    result = open_set_scores(store, split, every=2, keep=1.0, **FAST)
    known_val = len(split.indices("val")) - sum(
        split.classes[split.targets[r]] in result.held_out for r in split.indices("val")
    )
    assert [len(s) for s, _ in seen] == [known_val] * len(OOD_SCORES)  # calibrated on known validation rows
    for part in ("val", "test"):  # one cut per score, read on both parts
        rows = result.table[result.table["part"] == part].itertuples()
        for (scores, _), row in zip(seen, rows, strict=True):
            assert row.threshold == scores.max()


def test_too_few_known_classes_is_refused(store_and_split):
    store, split, _ = store_and_split
    with pytest.raises(ValueError, match="fewer than 2 classes"):
        open_set_scores(store, split, held_out=split.classes[:3], **FAST)


def test_the_cli_writes_a_results_folder_with_sha_and_config(store_and_split, tmp_path):
    store, split, _ = store_and_split
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "open-set",
            str(store.root),
            "--split",
            split.name,
            "--hold-out-every",
            "2",
            "--epochs",
            "2",
            "--min-steps",
            "10",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / "evaluation.json").read_text())
    assert (
        record["evaluation"] == "open_set" and record["git_sha"] and record["config"]["hold_out_every"] == 2
    )
    assert [(row["score"], row["part"]) for row in record["table"]] == [
        (score, part) for score in OOD_SCORES for part in ("val", "test")
    ]
    assert (out / "open_set.csv").exists() and (out / "metrics.json").exists()
    assert "energy (val): held-out rejected" in result.output and "energy (test)" in result.output
    bad = CliRunner().invoke(app, ["evaluate", "open-set", str(store.root), "--split", "nope"])
    assert bad.exit_code == 1 and "no such split" in bad.output
