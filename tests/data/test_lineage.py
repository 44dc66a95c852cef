"""Backbones record the images they learn from; probes refuse to score any of them."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from plankdiff.cli import app
from plankdiff.data.lineage import (
    TRAINING_IMAGES_FILE,
    LeakError,
    image_ids,
    pretraining_rows,
    read_training_images,
    readouts,
    write_training_images,
)
from plankdiff.probe.run import probe_features


def test_a_diffusion_run_records_every_image_it_trained_on(tiny_run, prepared_small_ndsb):
    recorded = read_training_images(tiny_run)
    expected = image_ids(prepared_small_ndsb, np.arange(len(prepared_small_ndsb)))  # tiny_run: every row
    assert np.array_equal(recorded, np.unique(expected))


def test_identities_are_shared_by_preparations_of_one_source_and_differ_across_sources(prepared_small_ndsb):
    rows = np.arange(5)
    same = image_ids(prepared_small_ndsb, rows)
    assert len(set(same.tolist())) == 5
    other = type("Other", (), {})()
    other.info = {"source_hash": "another-zip"}
    other.meta = prepared_small_ndsb.meta
    assert not np.isin(image_ids(other, rows), same).any()


OPTIONS = {"epochs": 2, "min_steps": 5}


def test_probe_refuses_a_backbone_that_trained_on_the_test_images(store_and_split):
    dataset, store, split = store_and_split
    write_training_images(
        store.root, dataset, np.concatenate([split.indices("train"), split.indices("test")[:1]])
    )
    with pytest.raises(LeakError, match=r"1 of the \d+ test images of split long-tailed-s0"):
        probe_features(store, split, bootstrap=0, probe_options=OPTIONS)
    result = probe_features(store, split, bootstrap=0, probe_options=OPTIONS, transductive=True)
    assert result.lineage.startswith("transductive")


def test_probe_refuses_validation_images_the_backbone_trained_on(store_and_split):
    dataset, store, split = store_and_split
    write_training_images(store.root, dataset, split.indices("val"))
    with pytest.raises(LeakError, match="val images"):
        probe_features(store, split, bootstrap=0, probe_options=OPTIONS)


def test_probe_on_unseen_rows_says_it_checked_and_logs_one_test_readout(store_and_split):
    dataset, store, split = store_and_split
    assert not (store.root / TRAINING_IMAGES_FILE).exists()
    assert probe_features(store, split, bootstrap=0, probe_options=OPTIONS).lineage.startswith("unknown")
    write_training_images(store.root, dataset, split.indices("train"))
    before = readouts(dataset, split.name)
    result = probe_features(store, split, bootstrap=0, probe_options=OPTIONS)
    assert result.lineage == "checked: unseen"
    assert readouts(dataset, split.name) == before + 1


def test_probe_selects_the_loss_on_validation_and_records_it(store_and_split):
    dataset, store, split = store_and_split
    result = probe_features(store, split, loss=("ce", "logit-adjusted"), bootstrap=0, probe_options=OPTIONS)
    assert result.hyperparameters["loss"] in ("ce", "logit-adjusted")
    assert set(result.table["loss"]) == {result.hyperparameters["loss"]}


def test_pretraining_needs_a_split_or_an_explicit_all_rows(ndsb_copy):
    with pytest.raises(ValueError, match="give --split"):
        pretraining_rows(ndsb_copy, None, all_rows=False)
    with pytest.raises(ValueError, match="exclude each other"):
        pretraining_rows(ndsb_copy, "long-tailed-s0", all_rows=True)
    assert len(pretraining_rows(ndsb_copy, None, all_rows=True)) == len(ndsb_copy)


@pytest.mark.parametrize(
    "command", [["diffusion", "train", "--preset", "tiny"], ["baseline", "train", "simclr"]]
)
def test_pretraining_commands_refuse_to_default_to_every_row(command, ndsb_copy, tmp_path):
    result = CliRunner().invoke(
        app, [*command, str(ndsb_copy.root), "--max-steps", "1", "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())  # rich wraps long lines at the terminal width
    assert "give --split" in text and "Traceback" not in text
    assert not (tmp_path / "run" / TRAINING_IMAGES_FILE).exists()
