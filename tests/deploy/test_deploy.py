"""Deployment on small real data: export → load must give the very same probabilities, a changed file or
another major version must be refused, and `predict` on raw image files must land exactly where the
prepared arrays land (same preprocessing path), with counts that add up and unreadable files
reported. Abstention thresholds are checked on synthetic probabilities, where the answer is known."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from deploy_common import IFCB, PAIRS
from PIL import Image
from safetensors.numpy import load_file, save_file

from plankdiff.choices import NOISE_CEILING
from plankdiff.data.prepare import PreparedDataset
from plankdiff.deploy.calibrate import ALWAYS_ABSTAIN, MIN_PREDICTIONS, calibrate_thresholds, decide
from plankdiff.deploy.export import (
    UNCLASSIFIED,
    UNKNOWN,
    ModelCardError,
    export_classifier,
    image_seed,
    load_classifier,
)
from plankdiff.deploy.predict import (
    BLANK_REASON,
    SHIFT_ALARM_COLUMNS,
    list_inputs,
    merge_parts,
    predict,
    predict_share,
)
from plankdiff.diffusion.model import load_backbone
from plankdiff.diffusion.train import to_model_range
from plankdiff.features.extract import ExtractionRequest, Extractor
from plankdiff.probe.linear import fit_single

SMHI_BIN = "D20220522T000439_IFCB134"
needs_ifcb = pytest.mark.skipif(not IFCB.is_dir(), reason=f"IFCB fixtures not found at {IFCB}")


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False)


def reference_proba(deployed, dataset: PreparedDataset) -> np.ndarray:
    """The deployed classifier applied to the prepared arrays, seeded like `predict` (by path)."""
    seeds = np.array([image_seed(p) for p in dataset.meta["path"]])
    return deployed.predict_proba(np.asarray(dataset.images), seeds)


# -- export and load -----------------------------------------------------------------------------


def test_card_describes_the_classifier(model, dataset, tiny_run):
    card = json.loads((model / "card.json").read_text())
    assert [p["name"] for p in card["pairs"]] == PAIRS
    alphas = load_backbone(tiny_run)[1].alphas_cumprod
    for entry in card["pairs"]:
        assert entry["alpha_bar"] == pytest.approx(float(alphas[entry["t"]]))
    assert [p["dim"] for p in card["pairs"]] == [16, 32]  # tiny: dec2@16 is 16 wide, enc2@8 is 32
    assert card["preprocess"] == dataset.info["preprocess"]
    # The preparation's ceiling on the border noise travels to predict (which applies `params`).
    assert card["preprocess"]["noise_ceiling"] == NOISE_CEILING
    assert load_classifier(model).params == dataset.params
    assert card["classes"] == dataset.classes
    assert card["training_data"]["key"] == dataset.key
    assert set(card["abstention"]["thresholds"]) == set(dataset.classes)
    assert card["abstention"]["target_precision"] == 0.9
    assert set(card["sha256"]) >= {"unet/diffusion_pytorch_model.safetensors", "probe.safetensors"}
    test = card["metrics"]["test"]
    assert test["n"] == 8 and 0 <= test["accuracy"] <= 1  # 2 test images per class
    assert card["metrics"]["probe"]["n_train"] == 36 and card["metrics"]["val"]["n"] == 4
    assert 0 <= test["abstention"]["coverage"] <= 1
    assert card["plankdiff_version"] and card["git_sha"]
    assert (model / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (model / "scheduler" / "scheduler_config.json").exists()


def test_round_trip_gives_identical_probabilities(tiny_run, store, dataset, tmp_path):
    x = np.concatenate([store.load(p) for p in PAIRS], axis=1)
    labels = dataset.labels[store.rows]
    classifier = fit_single(
        x, labels, train=np.arange(0, 48, 2), val=np.arange(1, 48, 2), n_classes=4, min_steps=50
    ).classifier()
    out = export_classifier(
        backbone_run=tiny_run,
        dataset=dataset,
        pairs=PAIRS,
        classifier=classifier,
        thresholds=None,
        metrics={},
        out=tmp_path / "model",
    )
    deployed = load_classifier(out)
    np.testing.assert_array_equal(deployed.probe.predict_proba(x), classifier.predict_proba(x))

    # End to end from pixels: the exported backbone gives the features the original run gives.
    pixels = np.array(dataset.images)
    seeds = np.array([image_seed(p) for p in dataset.meta["path"]])
    unet, scheduler = load_backbone(tiny_run)
    parts = []
    for block, t in (("dec2@16", 5), ("enc2@8", 10)):
        extractor = Extractor(unet, scheduler, request=ExtractionRequest(timesteps=(t,), blocks=(block,)))
        parts.append(extractor(to_model_range(torch.from_numpy(pixels)), seeds, t)[block].numpy())
        extractor.close()
    original = classifier.predict_proba(np.concatenate(parts, axis=1).astype(np.float16))
    proba = deployed.predict_proba(pixels, seeds)
    np.testing.assert_array_equal(proba, original)
    # No abstention: every decision is the top-1 class.
    assert deployed.decisions(proba) == [dataset.classes[i] for i in proba.argmax(axis=1)]


def test_export_refuses_a_probe_that_does_not_fit_the_pairs(tiny_run, store, dataset, tmp_path):
    x = store.load(PAIRS[0])
    classifier = fit_single(
        x, dataset.labels, train=np.arange(0, 48, 2), val=np.arange(1, 48, 2), n_classes=4, min_steps=10
    ).classifier()
    with pytest.raises(ValueError, match="probe takes 16 features, but pairs .* give 48"):
        export_classifier(
            backbone_run=tiny_run,
            dataset=dataset,
            pairs=PAIRS,
            classifier=classifier,
            thresholds=None,
            metrics={},
            out=tmp_path / "model",
        )


@pytest.mark.parametrize("name", ["probe.safetensors", "unet/diffusion_pytorch_model.safetensors"])
def test_a_changed_byte_is_refused(model, tmp_path, name):
    copy = shutil.copytree(model, tmp_path / "model")
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(ModelCardError, match=rf"{name}: sha256 .* does not match card\.json"):
        load_classifier(copy)


def test_another_major_version_is_refused(model, edit_card, tmp_path):
    copy = edit_card(model, lambda card: card.update(plankdiff_version="9.0.0"), tmp_path / "model")
    with pytest.raises(ModelCardError, match=r"card\.json: written by plankdiff 9\.0\.0"):
        load_classifier(copy)


def test_card_naming_other_classes_than_the_probe_is_refused(model, edit_card, tmp_path):
    copy = edit_card(model, lambda card: card["classes"].append("extra"), tmp_path / "model")
    with pytest.raises(ModelCardError, match="content_sha256 does not match"):
        load_classifier(copy)


def swap_first_two(card: dict) -> None:
    card["classes"][0], card["classes"][1] = card["classes"][1], card["classes"][0]


def rename_consistently(card: dict) -> None:
    renamed = {name: f"{name}_x" for name in card["classes"]}
    card["classes"] = [renamed[c] for c in card["classes"]]
    for key in ("thresholds", "status", "val_predictions"):
        card["abstention"][key] = {renamed[c]: v for c, v in card["abstention"][key].items()}


def zero_thresholds(card: dict) -> None:
    card["abstention"]["thresholds"] = dict.fromkeys(card["abstention"]["thresholds"], 0.0)


def raise_the_open_set_cut(card: dict) -> None:
    card["ood"]["threshold"] = 1e30  # nothing would ever be unknown


def drop_the_open_set_cut(card: dict) -> None:
    del card["ood"]  # would pass for an export from before open-set rejection


@pytest.mark.parametrize(
    "edit",
    [swap_first_two, rename_consistently, zero_thresholds, raise_the_open_set_cut, drop_the_open_set_cut],
)
def test_a_card_edited_after_export_is_refused(model, edit_card, tmp_path, edit):
    """Each edit keeps the card self-consistent (same class count, thresholds naming the classes):
    only the content hash exported with the weights catches it."""
    copy = edit_card(model, edit, tmp_path / "model")
    with pytest.raises(
        ModelCardError, match=r"card\.json: its classes, thresholds.*content_sha256 does not match"
    ):
        load_classifier(copy)
    edit_card(copy, lambda card: card.pop("content_sha256"))  # an export from before the hash
    with pytest.raises(ModelCardError, match="re-export"):
        load_classifier(copy)


# -- predict -------------------------------------------------------------------------------------


def test_predict_on_files_matches_the_prepared_arrays(model, dataset, image_folder, small_ndsb_zip, tmp_path):
    deployed = load_classifier(model)
    run = predict(
        deployed,
        [image_folder, small_ndsb_zip],
        tmp_path / "predictions.csv",
        batch_size=64,
        show_progress=False,
    )
    rows = read_csv(run.predictions)
    assert (run.n_predicted, run.n_skipped) == (96, 2) and len(rows) == 96
    assert list(rows.columns[:8]) == ["sample", "source", "top1", "top2", "top3", "p1", "p2", "p3"]
    assert rows["sample"].value_counts().to_dict() == {"ndsb-folder": 48, "ndsb": 48}

    # The key check: decode → preprocess from raw files gives what `prepare` gave.
    proba = reference_proba(deployed, dataset)
    expected = dict(
        zip(dataset.meta["path"], (dataset.classes[i] for i in proba.argmax(axis=1)), strict=True)
    )
    truth = dict(zip(dataset.meta["path"], dataset.meta["label"], strict=True))
    for sample in ("ndsb-folder", "ndsb"):
        mine = rows[rows["sample"] == sample]
        keys = [
            s.split("::")[-1] if "::" in s else str(Path(s).relative_to(image_folder)) for s in mine["source"]
        ]
        assert sorted(keys) == sorted(expected)
        assert list(mine["true_label"]) == [truth[k] for k in keys]
        assert list(mine["top1"]) == [expected[k] for k in keys]
        accuracy = (mine["top1"] == mine["true_label"]).mean()
        assert accuracy == pytest.approx((proba.argmax(axis=1) == dataset.labels).mean(), abs=1e-12)
        np.testing.assert_allclose(
            mine["p1"], [proba[i].max() for i in map(list(truth).index, keys)], atol=2e-6
        )

    decided = rows["decision"]
    assert set(decided) <= set(dataset.classes) | {UNCLASSIFIED, UNKNOWN}
    # Beyond the open-set cut first, whatever the posteriors; then the per-class abstention.
    unknown = rows["ood_score"].astype(float).to_numpy() > deployed.open_set.threshold
    assert ((decided == UNKNOWN) == unknown).all()
    thresholds = deployed.abstention.array(deployed.classes)
    below = rows["p1"].to_numpy() < thresholds[[deployed.classes.index(c) for c in rows["top1"]]]
    assert ((decided == UNCLASSIFIED) == (below & ~unknown)).all()

    counts = read_csv(run.counts)
    assert list(counts.columns) == ["sample", "class", "count"]
    for sample, group in counts.groupby("sample"):
        assert group["count"].sum() == (rows["sample"] == sample).sum()
        tally = rows.loc[rows["sample"] == sample, "decision"].value_counts().to_dict()
        # zero rows (e.g. `unknown` when no image of the sample was beyond the cut) are not decisions
        counted = {c: n for c, n in zip(group["class"], group["count"], strict=True) if n}
        assert counted == tally

    skipped = read_csv(run.skipped)
    reasons = dict(zip([Path(s).name for s in skipped["source"]], skipped["reason"], strict=True))
    assert reasons == {"broken.jpg": "not an image (format not recognised)", "empty.png": "zero-byte file"}


def test_two_processes_write_what_one_writes(model, image_folder, tmp_path):
    """Shards i::n, merged by the main process, reproduce the single-process files."""
    deployed = load_classifier(model)
    single = predict(deployed, [image_folder], tmp_path / "one" / "predictions.csv", show_progress=False)
    images, readers = list_inputs([image_folder])
    out = tmp_path / "two" / "predictions.csv"
    out.parent.mkdir()
    for index in range(2):
        predict_share(
            deployed,
            images,
            readers,
            out,
            process_index=index,
            num_processes=2,
            batch_size=7,
            show_progress=False,
        )
    volumes = {image.sample: image.volume_ml for image in images}
    assert merge_parts(out, num_processes=2, classes=deployed.classes, volumes=volumes) == (48, 2)
    one, two = read_csv(single.predictions), read_csv(out)
    varying = ["p1", "p2", "p3", "ood_score"]
    pd.testing.assert_frame_equal(one.drop(columns=varying), two.drop(columns=varying))
    # float32 convolutions depend on the batch's shape (the CPU library picks kernels per shape), and
    # the shards run batches of 7: probabilities agree to 1e-3 (1.8e-4 seen on normalised images),
    # open-set scores (squared distances over 48 features) to 0.5 % (0.17 % seen).
    np.testing.assert_allclose(one[["p1", "p2", "p3"]], two[["p1", "p2", "p3"]], atol=1e-3)
    np.testing.assert_allclose(one["ood_score"], two["ood_score"], rtol=5e-3)
    pd.testing.assert_frame_equal(read_csv(single.counts), read_csv(out.with_name("counts.csv")))
    pd.testing.assert_frame_equal(read_csv(single.skipped), read_csv(out.with_name("skipped.csv")))
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "counts.csv",
        "counts_wide.csv",
        "predictions.csv",
        "skipped.csv",
    ]


@needs_ifcb
def test_predict_on_ifcb_bins_through_the_cli(model, run_cli, tmp_path):
    bins = IFCB / "smhi-ifcb134-2022"
    result = run_cli("predict", model, bins, IFCB / "edge-cases", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    rows = read_csv(tmp_path / "predictions.csv")
    assert len(rows) == 7 and set(rows["sample"]) == {SMHI_BIN}  # ROI 1 is a trigger without image
    assert [s.rsplit("::", 1)[1] for s in rows["source"]] == [str(n) for n in range(2, 9)]
    assert (rows["true_label"] == "").all()
    counts = read_csv(tmp_path / "counts.csv")
    empty = "D20150411T205456_IFCB012"  # a readable bin without a single ROI: a sample counting zero
    assert set(counts["sample"]) == {SMHI_BIN, empty} and counts["count"].sum() == 7
    assert (counts[counts["sample"] == empty]["count"] == 0).all()
    assert len(counts) == 2 * (4 + 2)  # every class, `unclassified` and `unknown`, zeros kept
    # Each damaged bin is one line of skipped.csv, and the run went on.
    skipped = read_csv(tmp_path / "skipped.csv")
    assert len(skipped) == 2 and (skipped["reason"] != "").all() and empty not in set(skipped["sample"])
    assert "7 images" in result.output and "2 skipped" in result.output
    wide = read_csv(tmp_path / "counts_wide.csv").set_index("sample")
    assert wide.loc[SMHI_BIN, "n_images"] == 7 and wide.loc[empty, "n_images"] == 0
    ml = {SMHI_BIN: 4.860635326244212, empty: (0.621083 - 0.037422) * 0.25 / 60}
    for sample, volume in ml.items():
        assert wide.loc[sample, "volume_ml"] == pytest.approx(volume, rel=1e-6)
        for name in load_classifier(model).classes:
            assert wide.loc[sample, f"{name}_per_ml"] == pytest.approx(wide.loc[sample, name] / volume)


# -- abstention ----------------------------------------------------------------------------------


def synthetic_validation(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four classes. Class 0: right when confident, wrong below p = 0.6. Class 1: 70% right at any
    confidence. Class 2: predicted 40 times, always wrong. Class 3: predicted 3 times only."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []

    def add(predicted: int, p: float, true: int) -> None:
        row = np.full(4, (1 - p) / 3)
        row[predicted] = p
        rows.append(row)
        labels.append(true)

    for p in rng.uniform(0.3, 1.0, 200):
        add(0, p, 0 if p >= 0.6 else 1)
    for p in rng.uniform(0.3, 1.0, 100):
        add(1, p, 1 if rng.random() < 0.7 else 0)
    for p in rng.uniform(0.5, 1.0, 40):
        add(2, p, 3)
    for p in (0.5, 0.7, 0.9):
        add(3, p, 3)
    return np.array(rows), np.array(labels)


def test_thresholds_reach_the_target_precision_and_are_the_smallest_that_do():
    proba, labels = synthetic_validation()
    classes = ["a", "b", "c", "d"]
    abstention = calibrate_thresholds(proba, labels, classes=classes, target_precision=0.9)
    predicted, confidence = proba.argmax(axis=1), proba.max(axis=1)
    assert abstention.status["a"] == "calibrated"
    for index, name in enumerate(classes):
        if abstention.status[name] != "calibrated":
            continue
        tau = abstention.thresholds[name]
        mine = predicted == index
        kept = mine & (confidence >= tau)
        assert (labels[kept] == index).mean() >= 0.9
        for lower in np.unique(confidence[mine & (confidence < tau)]):
            chosen = mine & (confidence >= lower)
            assert (labels[chosen] == index).mean() < 0.9, f"{name}: a threshold below {tau} also reaches 0.9"
    # Class a is exactly right from 0.6 up: for precision 1 its threshold is the first image there.
    exact = calibrate_thresholds(proba, labels, classes=classes, target_precision=1.0)
    assert exact.thresholds["a"] == confidence[(predicted == 0) & (confidence >= 0.6)].min()


def test_unreachable_class_always_abstains_and_rare_class_uses_the_global_threshold():
    proba, labels = synthetic_validation()
    abstention = calibrate_thresholds(proba, labels, classes=["a", "b", "c", "d"], target_precision=0.9)
    assert abstention.status["c"] == "unreachable" and abstention.thresholds["c"] == ALWAYS_ABSTAIN
    assert abstention.always_abstain == ["c"]
    decided = decide(proba, abstention.array(["a", "b", "c", "d"]))
    assert (decided[proba.argmax(axis=1) == 2] == -1).all()
    assert (decided[proba.argmax(axis=1) == 0] != -1).any()

    assert abstention.val_predictions["d"] == 3 < MIN_PREDICTIONS
    assert abstention.status["d"] == "global" and abstention.thresholds["d"] == abstention.global_threshold
    # The global threshold is calibrated the same way over every prediction.
    kept = proba.max(axis=1) >= abstention.global_threshold
    assert (proba.argmax(axis=1)[kept] == labels[kept]).mean() >= 0.9


def test_thresholds_survive_the_card(model):
    deployed = load_classifier(model)
    card = json.loads((model / "card.json").read_text())["abstention"]
    assert deployed.abstention.thresholds == card["thresholds"]
    assert deployed.abstention.status == card["status"]
    assert set(card["status_meaning"]) == set(card["status"].values())


def test_predict_counts_per_capture_day_within_a_date_range_and_scores(
    model, image_folder, run_cli, tmp_path
):
    """SPC-style names carry the capture time: samples become days, and a date range selects them."""
    days = {"2020-03-01": 1583020800, "2020-03-02": 1583107200, "2020-04-01": 1585699200}
    spc = tmp_path / "spc"
    kept = []
    for index, image in enumerate(sorted(image_folder.glob("*/*.jpg"))):
        if image.name == "broken.jpg":
            continue
        day = list(days)[index % 3]
        seconds = days[day] + 60 * index if index % 7 else 0  # every 7th image: clock not set
        target = spc / image.parent.name / f"SPC-PWSSC-{seconds}-{index}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(image.read_bytes())
        if seconds and day != "2020-04-01":
            kept.append((day, image.parent.name))
    out = tmp_path / "out"
    result = run_cli(
        "predict", model, spc, "--out", out, "--sample-by", "day",
        "--captured-from", "2020-03-01", "--captured-to", "2020-03-31", "--score",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = read_csv(out / "predictions.csv")
    assert sorted(zip(rows["sample"], rows["true_label"], strict=True)) == sorted(
        (f"spc/{day}", label) for day, label in kept
    )
    counts = read_csv(out / "counts.csv")
    assert set(counts["sample"]) == {"spc/2020-03-01", "spc/2020-03-02"}
    score = json.loads((out / "score.json").read_text())
    assert score["labelled"] == len(kept) and score["samples"] == 2
    decided = rows[~rows["decision"].isin([UNCLASSIFIED, UNKNOWN])]
    expected = (decided["decision"] == decided["true_label"]).mean() if len(decided) else None
    assert score["known"]["accuracy_when_decided"] == pytest.approx(expected)
    assert "Bray–Curtis per sample" in result.output
    # Every counting method scored against the same labels: cc's pooled composition is the
    # argmax count of the labelled images of the classifier's classes, whatever the abstention.
    quantification = read_csv(out / "quantification.csv")
    assert set(quantification["method"]) == {"cc", "pcc", "pacc", "emq", "validation mix"}
    by_method = quantification.set_index(["sample", "method"])["n"].unstack()
    assert (by_method["validation mix"] == by_method["cc"]).all()  # the same images, another estimate
    assert set(quantification["sample"]) == {
        "spc/2020-03-01",
        "spc/2020-03-02",
        "(pooled)",
        "(median over samples)",
    }
    classes = json.loads((model / "card.json").read_text())["classes"]
    known = rows[rows["true_label"].isin(classes) & (rows["decision"] != "unknown")]  # what is counted
    true_counts = known["true_label"].value_counts()
    argmax_counts = known["top1"].value_counts()
    expected_bc = sum(abs(true_counts.get(c, 0) - argmax_counts.get(c, 0)) for c in classes) / (
        2 * len(known)
    )
    pooled_cc = quantification[(quantification["method"] == "cc") & (quantification["sample"] == "(pooled)")]
    assert pooled_cc["bray_curtis"].item() == pytest.approx(expected_bc)
    assert pooled_cc["n"].item() == len(known)
    assert "counting methods, Bray–Curtis pooled / median over samples: cc" in result.output


def test_predict_refuses_an_unknown_sample_grouping(model, image_folder, run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # typer's usage-error panel, unwrapped
    result = run_cli("predict", model, image_folder, "--out", tmp_path / "out", "--sample-by", "week")
    assert result.exit_code == 2
    assert "Invalid value for '--sample-by'" in result.output
    assert "'week' is not one of 'input', 'folder', 'day'" in result.output
    assert not (tmp_path / "out").exists()


# -- samples, tables, and hostile or interrupted runs ---------------------------------------------


def copy_images(source: Path, target: Path, classes: int = 2) -> Path:
    """The first `classes` class folders of `source`, as `<class>/<image>` under `target`."""
    for folder in sorted(p for p in source.iterdir() if p.is_dir())[:classes]:
        shutil.copytree(folder, target / folder.name, ignore=shutil.ignore_patterns("broken.jpg"))
    return target


def test_folders_named_alike_stay_two_samples_and_predict_returns_tables(model, image_folder, tmp_path):
    first = copy_images(image_folder, tmp_path / "a" / "station")
    second = copy_images(image_folder, tmp_path / "b" / "station", classes=1)
    run = predict(
        load_classifier(model), [first, second], tmp_path / "out" / "predictions.csv", show_progress=False
    )
    frame = run.frame()
    sizes = {"a/station": len(list(first.glob("*/*"))), "b/station": len(list(second.glob("*/*")))}
    assert frame["sample"].value_counts().to_dict() == sizes
    table = run.table
    assert isinstance(table, pd.DataFrame) and list(table["sample"]) == sorted(sizes)
    classes = load_classifier(model).classes
    assert list(table.columns) == [
        "sample",
        "volume_ml",
        "n_images",
        *SHIFT_ALARM_COLUMNS,
        *classes,
        UNCLASSIFIED,
        UNKNOWN,
    ]
    assert dict(zip(table["sample"], table["n_images"], strict=True)) == sizes
    assert (table[[*classes, UNCLASSIFIED, UNKNOWN]].sum(axis=1) == table["n_images"]).all()
    # The two class folders of a/station were pooled into one sample: the run says so.
    assert len(run.notes) == 1 and run.notes[0].startswith("a/station: images of 2 subfolders")
    by_folder = predict(
        load_classifier(model),
        [first],
        tmp_path / "f" / "predictions.csv",
        show_progress=False,
        sample_by="folder",
    )
    folders = sorted(p.name for p in first.iterdir())
    assert sorted(by_folder.table["sample"]) == [f"station/{name}" for name in folders]


def test_a_killed_run_leaves_no_output_that_looks_current(model, image_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    deployed = load_classifier(model)
    predict(deployed, [image_folder], out / "predictions.csv", show_progress=False)
    assert (out / "predictions.csv").exists() and (out / "counts.csv").exists()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for SIGKILL between two batches

    monkeypatch.setattr(type(deployed), "assess", killed)
    with pytest.raises(KeyboardInterrupt):
        predict(deployed, [image_folder], out / "predictions.csv", show_progress=False)
    finals = {"predictions.csv", "counts.csv", "counts_wide.csv", "skipped.csv"}
    assert not finals & {p.name for p in out.iterdir()}


@pytest.mark.parametrize(
    "member, attributes, cause",
    [
        ("../escape.png", 0, "climbs out"),
        ("/etc/abs.png", 0, "absolute path"),
        ("link.png", 0o120777 << 16, "link"),
    ],
)
def test_predict_refuses_unsafe_zip_members(
    model, image_folder, run_cli, tmp_path, member, attributes, cause
):
    archive = tmp_path / "hostile.zip"
    image = next(image_folder.glob("*/*.jpg")).read_bytes()
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("cls/ok.jpg", image)
        info = zipfile.ZipInfo(member)
        info.external_attr = attributes
        handle.writestr(info, image)
    result = run_cli("predict", model, archive, "--out", tmp_path / "out")
    assert result.exit_code == 1 and cause in result.output and "Traceback" not in result.output
    errors = [line for line in result.output.strip().splitlines() if not line.startswith("device:")]
    assert len(errors) == 1  # one line for the refusal (beside the line saying where it runs)


def test_a_zip_bomb_member_is_skipped_with_bounded_memory(model, image_folder, tmp_path):
    import tracemalloc

    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("cls/ok.jpg", next(image_folder.glob("*/*.jpg")).read_bytes())
        with handle.open("cls/bomb.png", "w", force_zip64=True) as member:
            for _ in range(160):
                member.write(bytes(1 << 20))  # 160 MiB of zeros, a few hundred kB compressed
    tracemalloc.start()
    try:
        run = predict(
            load_classifier(model), [archive], tmp_path / "out" / "predictions.csv", show_progress=False
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (run.n_predicted, run.n_skipped) == (1, 1)
    skipped = read_csv(run.skipped)
    assert skipped["source"].str.endswith("cls/bomb.png").all() and "MiB" in skipped["reason"][0]
    assert peak < 100 * 2**20, f"peak {peak / 2**20:.0f} MiB: the member was read whole"


# -- calibration -----------------------------------------------------------------------------------


def test_temperature_scaling_fixes_overconfidence_without_changing_the_argmax():
    from plankdiff.deploy.calibrate import apply_temperature, expected_calibration_error, fit_temperature

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 3000)
    logits = rng.normal(size=(3000, 4))
    logits[np.arange(3000), labels] += 1.0
    calibrated = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    overconfident = apply_temperature(calibrated, 0.25)  # the same ranking, four times too sharp
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(4.0, rel=0.15)
    fixed = apply_temperature(overconfident, temperature)
    assert (fixed.argmax(axis=1) == overconfident.argmax(axis=1)).all()
    assert (
        expected_calibration_error(fixed, labels) < 0.03 < expected_calibration_error(overconfident, labels)
    )


def test_card_records_temperature_and_ece_and_predict_applies_it(model, dataset):
    card = json.loads((model / "card.json").read_text())
    calibration = card["calibration"]
    assert calibration["temperature"] > 0 and calibration["temperature"] != 1.0
    assert set(calibration["ece_15_bins"]) == {"val_before", "val_after", "test_before", "test_after"}
    assert calibration["ece_15_bins"]["val_after"] <= calibration["ece_15_bins"]["val_before"] + 1e-9
    deployed = load_classifier(model)
    seeds = np.array([image_seed(p) for p in dataset.meta["path"]])
    pixels = np.asarray(dataset.images)
    raw = deployed.probe.predict_proba(deployed.features(pixels, seeds))
    from plankdiff.deploy.calibrate import apply_temperature

    np.testing.assert_allclose(
        deployed.predict_proba(pixels, seeds), apply_temperature(raw, calibration["temperature"]), atol=1e-6
    )


# -- counts corrected for prior shift --------------------------------------------------------------


def test_export_saves_the_calibrated_validation_posteriors_and_hashes_them(model, tmp_path):
    card = json.loads((model / "card.json").read_text())
    assert card["quantification"]["n_val"] == card["metrics"]["val"]["n"] == 4
    assert "quantify.safetensors" in card["sha256"]
    saved = load_file(str(model / "quantify.safetensors"))
    assert saved["proba"].shape == (4, 4) and saved["labels"].shape == (4,)
    np.testing.assert_allclose(saved["proba"].sum(axis=1), 1, rtol=1e-5)
    copy = shutil.copytree(model, tmp_path / "model")
    saved["labels"] = (saved["labels"] + 1) % 4  # other labels: the counting would be fitted on a lie
    save_file(saved, str(copy / "quantify.safetensors"))
    with pytest.raises(ModelCardError, match=r"quantify\.safetensors: sha256 .* does not match"):
        load_classifier(copy)


@pytest.mark.parametrize("method", ["cc", "pcc", "pacc", "emq"])
def test_predict_counts_by_each_method_with_intervals(model, image_folder, tmp_path, method):
    classifier = load_classifier(model)
    run = predict(
        classifier, [image_folder], tmp_path / "predictions.csv", show_progress=False, counts=method
    )
    counts = read_csv(run.counts)
    assert list(counts.columns) == ["sample", "class", "count", "low", "high"]  # no volume: no per mL
    # Every image is counted into a class, or as unknown (beyond the open-set cut: not quantified).
    assert set(counts["class"]) == {*classifier.classes, UNKNOWN}
    assert (counts["low"] <= counts["count"] + 1e-9).all() and (
        counts["count"] <= counts["high"] + 1e-9
    ).all()
    assert counts["count"].sum() == pytest.approx(run.n_predicted)
    frame = run.frame()
    unknown = frame["decision"] == UNKNOWN
    assert counts.loc[counts["class"] == UNKNOWN, "count"].sum() == unknown.sum()
    top1 = frame.assign(top1=frame["top1"].where(~unknown, UNKNOWN)).groupby("sample")["top1"].value_counts()
    if method == "cc":  # classify and count is the plain top-1 count, abstention ignored
        for row in counts.itertuples():
            assert row.count == pytest.approx(top1.get((row.sample, row._2), 0))
    wide = run.table.set_index("sample")
    assert (wide["method"] == method).all() and wide["n_images"].sum() == run.n_predicted
    for name in classifier.classes:
        assert {f"{name}_low", f"{name}_high"} <= set(wide.columns)


@needs_ifcb
def test_predict_counts_per_ml_through_the_cli(model, run_cli, tmp_path):
    result = run_cli("predict", model, IFCB / "smhi-ifcb134-2022", "--out", tmp_path, "--counts", "pacc")
    assert result.exit_code == 0, result.output
    assert "counts by pacc" in result.output
    counts = read_csv(tmp_path / "counts.csv")
    volume = 4.860635326244212  # the bin's ml_analyzed
    for column in ("count", "low", "high"):
        np.testing.assert_allclose(counts[f"{column}_per_ml"], counts[column] / volume)
    wide = read_csv(tmp_path / "counts_wide.csv").set_index("sample")
    name = load_classifier(model).classes[0]
    assert wide.loc[SMHI_BIN, f"{name}_high_per_ml"] == pytest.approx(
        wide.loc[SMHI_BIN, f"{name}_high"] / volume
    )
    bad = run_cli("predict", model, IFCB / "smhi-ifcb134-2022", "--out", tmp_path, "--counts", "acc")
    assert bad.exit_code != 0 and "--counts" in bad.output


def test_counts_are_refused_for_a_classifier_exported_without_validation_posteriors(
    tiny_run, store, dataset, image_folder, tmp_path
):
    x = np.concatenate([store.load(p) for p in PAIRS], axis=1)
    classifier = fit_single(
        x,
        dataset.labels[store.rows],
        train=np.arange(0, 48, 2),
        val=np.arange(1, 48, 2),
        n_classes=4,
        min_steps=10,
    ).classifier()
    out = export_classifier(
        backbone_run=tiny_run,
        dataset=dataset,
        pairs=PAIRS,
        classifier=classifier,
        thresholds=None,
        metrics={},
        out=tmp_path / "model",
    )
    with pytest.raises(ModelCardError, match="exported without validation posteriors"):
        predict(load_classifier(out), [image_folder], tmp_path / "run" / "predictions.csv", counts="emq")
    assert not (tmp_path / "run" / "predictions.csv").exists()


def test_an_empty_folder_or_zip_named_as_input_is_a_sample_of_zero_images_and_is_said(
    model, image_folder, tmp_path
):
    """Named on the command line, it is a sample (zero counts), not an input that vanishes; and as a
    folder without one image is more often a wrong path or an unread format, a note says so."""
    station = tmp_path / "station_7"
    station.mkdir()
    (station / "log.txt").write_text("no image here")  # not an image suffix: nothing to read
    archive = tmp_path / "cast_3.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.md", "nothing")
    run = predict(
        load_classifier(model),
        [image_folder, station, archive],
        tmp_path / "out" / "predictions.csv",
        show_progress=False,
    )
    counts = read_csv(run.counts)
    for empty in ("station_7", "cast_3"):
        rows = counts[counts["sample"] == empty]
        assert len(rows) > 0 and (rows["count"] == 0).all(), empty
        assert run.table.set_index("sample").loc[empty, "n_images"] == 0
        assert sum(empty in note and "no image in it" in note for note in run.notes) == 1, run.notes
    assert empty not in set(read_csv(run.predictions)["sample"])
    skipped = set(read_csv(run.skipped)["sample"])  # the image folder's two broken files only
    assert skipped == {image_folder.name}  # an empty input is not an unreadable image


def test_a_blank_frame_is_skipped_as_blank_not_counted_as_an_organism(model, image_folder, tmp_path):
    """A uniform frame (white, grey or black) normalises to an empty canvas, which every probe maps
    to some class with confidence; it is skipped with its reason instead."""
    assert load_classifier(model).params.background == "normalise"
    frames = tmp_path / "frames"
    frames.mkdir()
    for name, value in (("white", 255), ("grey", 128), ("black", 0)):
        Image.fromarray(np.full((40, 60), value, dtype=np.uint8)).save(frames / f"{name}.png")
    organism = next(p for p in sorted(image_folder.rglob("*.jpg")) if p.stat().st_size > 0)
    shutil.copy(organism, frames / "organism.jpg")
    run = predict(load_classifier(model), [frames], tmp_path / "out" / "predictions.csv", show_progress=False)
    skipped = read_csv(run.skipped)
    assert {Path(s).name: r for s, r in zip(skipped["source"], skipped["reason"], strict=True)} == {
        f"{name}.png": BLANK_REASON for name in ("white", "grey", "black")
    }
    predicted = read_csv(run.predictions)
    assert [Path(s).name for s in predicted["source"]] == ["organism.jpg"]
    assert read_csv(run.counts)["count"].sum() == 1
