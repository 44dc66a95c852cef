"""Open-set rejection in `export` and `predict`: the relative-Mahalanobis statistics stored with
the probe give the score fitted on the training features, the cut is set on validation rows only, images unlike any
training image (frame-filling shapes no NDSB class has) are `unknown` while the subset's own images
are not, the
counts and the EcoTaxa bundle carry `unknown` apart, and a classifier exported before all this still
predicts, with no unknown decision, and says so once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deploy_common import PAIRS, SPLIT
from PIL import Image
from safetensors.numpy import load_file, save_file

from plankdiff.data.splits import Split
from plankdiff.deploy import ecotaxa
from plankdiff.deploy.export import (
    OOD_ARRAY_NAMES,
    UNCLASSIFIED,
    UNKNOWN,
    card_content_hash,
    fit_open_set,
    load_classifier,
)
from plankdiff.deploy.predict import predict
from plankdiff.probe.ood import OOD_ARRAYS, OOD_K, RelativeMahalanobisScorer, calibrate_threshold
from plankdiff.probe.protocol import DEFAULT_OOD_SCORE
from plankdiff.provenance import sha256_file


def split_features(store, dataset) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The fused features the exported probe read, and the labels, per part of the split."""
    split = Split.load(dataset, SPLIT)
    everything = np.concatenate([store.load(p) for p in PAIRS], axis=1).astype(np.float32)
    x = {s: everything[store.positions(split.indices(s))] for s in ("train", "val", "test")}
    return x, {s: split.labels(s) for s in ("train", "val", "test")}


def test_the_stored_statistics_are_the_training_features_and_the_cut_is_set_on_val(model, store, dataset):
    card = json.loads((model / "card.json").read_text())["ood"]
    assert card["method"] == "relative-mahalanobis" and card["keep"] == 0.95 and "Ren" in card["meaning"]
    assert (card["n_val"], card["n_test"]) == (4, 8)
    deployed = load_classifier(model)
    arrays = load_file(str(model / "probe.safetensors"))
    assert arrays["ood_means"].shape == (4, 48) and arrays["ood_precision"].shape == (48, 48)
    assert arrays["ood_background_mean"].shape == (48,) and arrays["ood_background_precision"].shape == (
        48,
        48,
    )
    x, y = split_features(store, dataset)
    refit = RelativeMahalanobisScorer.for_classifier(deployed.probe, x["train"], y["train"])
    np.testing.assert_allclose(arrays["ood_means"], refit.classes.means, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(arrays["ood_background_mean"], refit.background_mean, rtol=1e-5, atol=1e-5)
    for part in ("train", "val", "test"):  # what the loaded classifier scores is the refitted score
        np.testing.assert_allclose(deployed.ood_scores(x[part]), refit.score(x[part]), rtol=1e-3, atol=1e-2)
    val = deployed.ood_scores(x["val"])
    assert card["threshold"] == calibrate_threshold(val, keep=0.95)
    assert card["val_kept"] == (val <= card["threshold"]).mean() >= 0.95
    assert card["test_kept"] == (deployed.ood_scores(x["test"]) <= card["threshold"]).mean()


def test_changing_test_rows_changes_the_measured_share_not_the_cut(model, store, dataset):
    probe = load_classifier(model).probe
    x, y = split_features(store, dataset)
    # A distance score: the energy of rows 100 times farther than any is *low* (confident logits).
    fit = lambda rows, **kw: fit_open_set(probe, rows, y["train"], method="relative-mahalanobis", **kw)  # noqa: E731
    cut, _ = fit(x)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=x["test"].shape).astype(np.float32) * 100
    shifted, _ = fit(x | {"test": noise})
    assert shifted.threshold == cut.threshold and shifted.val_kept == cut.val_kept
    assert shifted.test_kept == 0.0 < cut.test_kept  # the far test rows are measured as rejected
    # The validation rows do set it.
    moved, _ = fit(x | {"val": x["val"] * 3})
    assert moved.threshold != cut.threshold
    looser, _ = fit(x, keep=0.5)
    assert looser.threshold < cut.threshold


STRANGE = 6


@pytest.fixture(scope="module")
def strange_images(tmp_path_factory) -> Path:
    """Dark shapes on a white background, as NDSB images are, but of no organism and filling the
    frame: discs, a square, a ring, frames. (A blank or pure-noise image is not among them: the
    background normalisation turns it into an almost empty frame, which the tiny backbone's features
    put among the smallest NDSB objects; its score stays below the cut.)"""
    root = tmp_path_factory.mktemp("strange") / "strange"
    root.mkdir()
    y, x = np.mgrid[:64, :64]
    radius = np.hypot(x - 32, y - 32)
    shapes = {
        "disc": radius < 25,
        "grey-disc": radius < 26,
        "square": (abs(x - 32) < 26) & (abs(y - 32) < 26),
        "ring": abs(radius - 20) < 3,
        "wide-frame": (np.minimum(x, y) < 8) | (np.maximum(x, y) > 55),
        "thin-frame": (np.minimum(x, y) < 2) | (np.maximum(x, y) > 61),
    }
    for name, mask in shapes.items():
        dark = 100 if name == "grey-disc" else 0
        Image.fromarray(np.where(mask, dark, 255).astype(np.uint8)).save(root / f"{name}.png")
    assert len(shapes) == STRANGE
    return root


def test_images_unlike_the_training_images_are_unknown(
    model, image_folder, strange_images, run_cli, tmp_path
):
    out = tmp_path / "run"
    result = run_cli("predict", model, image_folder, strange_images, "--out", out, "--format", "ecotaxa")
    assert result.exit_code == 0, result.output
    assert "no open-set rejection" not in result.output
    rows = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    strange, typical = rows[rows["sample"] == "strange"], rows[rows["sample"] == "ndsb-folder"]
    assert len(strange) == STRANGE and len(typical) == 48
    assert (strange["decision"] == UNKNOWN).all()
    assert (typical["decision"] == UNKNOWN).mean() < 0.25
    assert typical["ood_score"].astype(float).max() < strange["ood_score"].astype(float).min()

    # Counted as a class of its own, like `unclassified`, in both count tables.
    counts = pd.read_csv(out / "counts.csv", keep_default_na=False).set_index(["sample", "class"])["count"]
    for sample, group in rows.groupby("sample"):
        assert counts[sample, UNKNOWN] == (group["decision"] == UNKNOWN).sum()
        assert counts[sample, UNCLASSIFIED] == (group["decision"] == UNCLASSIFIED).sum()
    wide = pd.read_csv(out / "counts_wide.csv").set_index("sample")
    assert wide.loc["strange", UNKNOWN] == STRANGE and wide.loc["strange", "n_images"] == STRANGE
    # Six images are too few against this small validation set for the sample-level alarm.
    assert wide.loc["strange", "unknown_share"] == 1.0 and not wide.loc["strange", "shift_alarm"]
    assert wide.loc["strange", "shift_p"] < wide.loc["ndsb-folder", "shift_p"]
    # EcoTaxa: no category for an unknown object, and its score as a number.
    tsv = next((out / ecotaxa.FOLDER).glob("ecotaxa_*.tsv"))
    table = pd.read_csv(tsv, sep="\t", skiprows=[1], keep_default_na=False)
    unknown = table["object_source"].isin(rows.loc[rows["decision"] == UNKNOWN, "source"])
    assert unknown.sum() == (rows["decision"] == UNKNOWN).sum()
    assert (table.loc[unknown, "object_annotation_category"] == "").all()
    assert (table.loc[unknown, "object_annotation_status"] == "").all()
    np.testing.assert_allclose(table["object_ood_score"].astype(float), rows["ood_score"].astype(float))


def test_a_sample_of_many_unknown_images_raises_the_shift_alarm(
    model, image_folder, strange_images, run_cli, tmp_path
):
    """Five copies of each strange shape (30 images, every one beyond the cut) are evidence enough,
    even against this small validation set; the subset's own images are not flagged."""
    many = tmp_path / "many-strange"
    many.mkdir()
    for copy in range(5):
        for image in strange_images.iterdir():
            shutil.copy(image, many / f"{image.stem}-{copy}.png")
    out = tmp_path / "run"
    result = run_cli("predict", model, image_folder, many, "--out", out)
    assert result.exit_code == 0, result.output
    wide = pd.read_csv(out / "counts_wide.csv").set_index("sample")
    assert wide.loc["many-strange", "shift_p"] < 1e-3 and wide.loc["many-strange", "shift_alarm"]
    assert not wide.loc["ndsb-folder", "shift_alarm"]
    assert "shift alarm: 1 of 2 samples" in " ".join(result.output.split())
    assert "many-strange" in result.output


def test_quantified_counts_leave_unknown_images_out_and_count_them_apart(
    model, image_folder, strange_images, tmp_path
):
    run = predict(
        load_classifier(model),
        [image_folder, strange_images],
        tmp_path / "run" / "predictions.csv",
        show_progress=False,
        counts="pcc",
    )
    counts = pd.read_csv(run.counts, keep_default_na=False).set_index(["sample", "class"])
    # The strange sample holds unknown images only: no class gets any of them.
    assert counts.loc[("strange", UNKNOWN), ["count", "low", "high"]].tolist() == [STRANGE] * 3
    classes = load_classifier(model).classes
    assert counts.loc[[("strange", c) for c in classes], "count"].sum() == 0
    frame = run.frame()
    typical = frame[frame["sample"] == "ndsb-folder"]
    n_unknown = (typical["decision"] == UNKNOWN).sum()
    known_total = counts.loc[[("ndsb-folder", c) for c in classes], "count"].sum()
    assert known_total == pytest.approx(len(typical) - n_unknown)
    table = run.table.set_index("sample")
    assert table.loc["strange", "n_images"] == STRANGE and table.loc["ndsb-folder", "n_images"] == 48
    assert table.loc["strange", UNKNOWN] == STRANGE
    # The alarm's columns follow n_images in counted tables too.
    assert table.columns.get_loc("unknown_share") == table.columns.get_loc("n_images") + 1
    assert table.loc["strange", "unknown_share"] == 1.0


def old_export(model: Path, target: Path, edit_card) -> Path:
    """`model` as exported before open-set rejection: no `ood` in the card (and its hash), no open-set
    arrays in probe.safetensors."""
    copy = Path(shutil.copytree(model, target))
    arrays = load_file(str(copy / "probe.safetensors"))
    save_file({k: v for k, v in arrays.items() if k not in OOD_ARRAY_NAMES}, str(copy / "probe.safetensors"))

    def without_ood(card: dict) -> None:
        del card["ood"]
        card["sha256"]["probe.safetensors"] = sha256_file(copy / "probe.safetensors")
        card["content_sha256"] = card_content_hash(card)

    return edit_card(copy, without_ood)


def test_a_classifier_exported_before_open_set_rejection_still_predicts(
    model, edit_card, image_folder, strange_images, run_cli, tmp_path
):
    old = old_export(model, tmp_path / "old", edit_card)
    assert load_classifier(old).open_set is None
    out = tmp_path / "run"
    result = run_cli("predict", old, image_folder, strange_images, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.output.count("no open-set rejection") == 1
    assert "was exported before open-set rejection" in result.output
    rows = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert (
        len(rows) == 48 + STRANGE and (rows["decision"] != UNKNOWN).all() and (rows["ood_score"] == "").all()
    )
    # The same posteriors and abstention as the classifier with the cut, where it does not reject.
    assert run_cli("predict", model, image_folder, strange_images, "--out", tmp_path / "new").exit_code == 0
    new = pd.read_csv(tmp_path / "new" / "predictions.csv", keep_default_na=False)
    kept = new["decision"] != UNKNOWN
    assert kept.any() and (new.loc[kept, "decision"] == rows.loc[kept, "decision"]).all()
    counts = pd.read_csv(out / "counts.csv", keep_default_na=False)
    assert (counts.loc[counts["class"] == UNKNOWN, "count"] == 0).all()


@pytest.mark.parametrize("ood", ["mahalanobis", "knn", "energy", "off", None])
def test_export_with_another_open_set_score_or_none(ood, export_args, image_folder, run_cli, tmp_path):
    out = tmp_path / "model"
    chosen = [] if ood is None else ["--ood", ood]  # None: export's default score
    result = run_cli(*export_args(), *[a for p in PAIRS for a in ("--pair", p)], "--out", out, *chosen)
    assert result.exit_code == 0, result.output
    ood = ood or DEFAULT_OOD_SCORE
    card = json.loads((out / "card.json").read_text())
    stored = load_file(str(out / "probe.safetensors"))
    wanted = set(OOD_ARRAYS.get(ood, ()))
    assert set(OOD_ARRAY_NAMES) & set(stored) == wanted  # its own arrays, none of another score's
    deployed = load_classifier(out)
    run = predict(deployed, [image_folder], tmp_path / "run" / "predictions.csv", show_progress=False)
    frame = run.frame()
    if ood == "off":
        assert card["ood"] is None and "exported with --ood off" in run.open_set_note
        assert (frame["decision"] != UNKNOWN).all()
        return
    assert card["ood"]["method"] == ood and run.open_set_note is None
    if ood == "knn":  # the training rows, unit length, and the k the card names
        assert card["ood"]["k"] == OOD_K and stored["ood_bank"].shape[1] == 48
        np.testing.assert_allclose(np.linalg.norm(stored["ood_bank"], axis=1), 1, rtol=1e-5)
    else:
        assert "k" not in card["ood"]
    assert deployed.ood_scores(np.zeros((1, 48), np.float32)).shape == (1,)
    scores = frame["ood_score"].astype(float)
    assert ((frame["decision"] == UNKNOWN) == (scores > card["ood"]["threshold"])).all()


def test_a_share_to_keep_outside_0_1_is_refused(export_args, run_cli, tmp_path):
    args = [*export_args(), "--pair", PAIRS[0], "--out", tmp_path / "m"]
    zero = run_cli(*args, "--ood-keep", "0")
    assert (
        zero.exit_code == 1 and "--ood-keep 0.0: the share" in zero.output and "Traceback" not in zero.output
    )
    above = run_cli(*args, "--ood-keep", "1.5")
    assert above.exit_code == 2 and not (tmp_path / "m").exists()
    unknown = run_cli(*args, "--ood", "nearest")
    assert unknown.exit_code == 2
