"""`export --from`: a probe result's whole recipe (store, split, fused pairs, object size, loss) becomes a
classifier whose predictions on raw files are what the probe computes on the stored features, and a
classifier whose calibration or test images the backbone trained on is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from deploy_common import PAIRS, SPLIT

from plankdiff.baselines.extract import extract_baseline_features
from plankdiff.baselines.train import BaselineConfig, BaselineTrainer, training_rows
from plankdiff.data.lineage import TRAINING_IMAGES_FILE, write_training_images
from plankdiff.data.splits import Split
from plankdiff.deploy.export import image_seed, load_classifier
from plankdiff.deploy.predict import predict
from plankdiff.diffusion.model import load_backbone
from plankdiff.diffusion.train import to_model_range
from plankdiff.features.extract import ExtractionRequest, Extractor, extract_features, model_hash
from plankdiff.features.store import FeatureStore
from plankdiff.probe.run import load_pairs, probe_features

FUSED = "+".join(PAIRS)


@pytest.fixture(scope="module")
def result(tiny_run, store, dataset, tmp_path_factory) -> Path:
    """A probe result with object size and fusion, on a store that records its backbone and whose
    backbone trained on the split's train rows only."""
    root = tmp_path_factory.mktemp("from-result")
    copy = Path(shutil.copytree(store.root, root / "store"))
    info = json.loads((copy / "store.json").read_text())
    (copy / "store.json").write_text(
        json.dumps(info | {"backbone": str(tiny_run), "dataset": str(dataset.root)})
    )
    split = Split.load(dataset, SPLIT)
    write_training_images(copy, dataset, split.indices("train"))
    out = root / "metrics" / "ndsb" / "diffusion" / "seed0"
    protocol = {"epochs": 40, "min_steps": 50}
    probe_features(
        FeatureStore(copy),
        split,
        pairs=PAIRS,
        with_size=True,
        fuse_top=2,
        bootstrap=0,
        out=out,
        config={"protocol": protocol},
        probe_options=protocol,
    )
    # Fusion only wins on validation sometimes; the recipe under test is the fused one, so select it.
    selected = json.loads((out / "selected.json").read_text())
    (out / "selected.json").write_text(json.dumps(selected | {"pair": FUSED}))
    return out


def test_export_from_a_result_carries_the_recipe_and_predict_applies_it(
    result, dataset, small_ndsb_zip, run_cli, tmp_path
):
    out = tmp_path / "model"
    exported = run_cli("export", "--from", result, "--out", out)
    assert exported.exit_code == 0, exported.output
    assert f"from {' + '.join(PAIRS)} with object size" in exported.output
    card = json.loads((out / "card.json").read_text())
    assert [p["name"] for p in card["pairs"]] == PAIRS
    assert card["recipe"] == {
        "backbone": "diffusion",
        "object_size": True,
        "fused_pairs": 2,
        "orientations": 1,
    }
    assert card["metrics"]["lineage"] == "checked: unseen"
    assert card["metrics"]["source"]["result"] == str(result.resolve())
    deployed = load_classifier(out)
    assert deployed.probe.n_features == 16 + 3 + 32 + 3  # [dec2@16, size, enc2@8, size], as load_pairs builds

    # The deployed classifier on the prepared pixels with the sizes the probe read from the store
    # (load_pairs) = predict on the raw zip, which computes the sizes itself.
    store = FeatureStore(Path(json.loads((result / "selected.json").read_text())["features"]))
    sizes = load_pairs(store, PAIRS[:1], np.arange(len(store.rows)), with_size=True)[PAIRS[0]][:, -3:]
    meta = dataset.meta
    assert (store.rows == np.arange(len(meta))).all()
    images, seeds = np.asarray(dataset.images), np.array([image_seed(p) for p in meta["path"]])
    x = deployed.features(images, seeds, sizes)
    np.testing.assert_array_equal(x[:, 16:19], sizes)  # the size after each pair, as load_pairs builds
    np.testing.assert_array_equal(x[:, 51:54], sizes)
    pixels = deployed.predict_proba(images, seeds, sizes)
    without_size = deployed.probe.predict_proba(
        np.where(np.isin(np.arange(54), [16, 17, 18, 51, 52, 53]), 0, x)
    )
    assert not np.allclose(pixels, without_size)  # the size columns matter to this probe
    run = predict(deployed, [small_ndsb_zip], tmp_path / "run" / "predictions.csv", show_progress=False)
    rows = pd.read_csv(run.predictions, keep_default_na=False)
    order = [list(meta["path"]).index(s.split("::", 1)[1]) for s in rows["source"]]
    np.testing.assert_allclose(rows["p1"], pixels.max(axis=1)[order], atol=2e-6)
    with pytest.raises(ValueError, match="reads the object size"):
        deployed.predict_proba(np.asarray(dataset.images), np.zeros(len(meta), dtype=np.int64))


def test_export_refuses_a_classifier_scored_on_images_the_backbone_trained_on(
    result, tiny_run, run_cli, tmp_path
):
    copy = Path(shutil.copytree(result.parents[3], tmp_path / "copy"))
    store = copy / "store"
    shutil.copy(tiny_run / TRAINING_IMAGES_FILE, store / TRAINING_IMAGES_FILE)  # it trained on every image
    seed_dir = copy / result.relative_to(result.parents[3])
    selected = json.loads((seed_dir / "selected.json").read_text())
    (seed_dir / "selected.json").write_text(json.dumps(selected | {"features": str(store)}))
    refused = run_cli("export", "--from", seed_dir, "--out", tmp_path / "model")
    assert refused.exit_code == 1 and "were training images of this backbone" in refused.output
    assert "Traceback" not in refused.output and not (tmp_path / "model").exists()
    allowed = run_cli("export", "--from", seed_dir, "--out", tmp_path / "model", "--transductive")
    assert allowed.exit_code == 0, allowed.output
    assert json.loads((tmp_path / "model" / "card.json").read_text())["metrics"]["lineage"].startswith(
        "transductive"
    )


def test_export_options_are_checked(result, store, run_cli, tmp_path):
    both = run_cli("export", "--from", result, "--split", SPLIT, "--out", tmp_path / "m")
    assert both.exit_code == 1 and "drop --split" in both.output
    neither = run_cli("export", "--features", store.root, "--out", tmp_path / "m")
    assert neither.exit_code == 1 and "give --from RESULT, or --backbone, --split, --pair" in neither.output
    missing = run_cli("export", "--from", tmp_path, "--out", tmp_path / "m")
    assert missing.exit_code == 1 and "no selected.json" in missing.output


def test_orientation_averaging_is_carried_into_the_card_and_applied_by_predict(
    tiny_run, dataset, export_args, run_cli, tmp_path
):
    unet, scheduler = load_backbone(tiny_run)
    request = ExtractionRequest(timesteps=(5,), blocks=("dec2@16",), orientations=8, batch_size=64)
    store = extract_features(
        unet, scheduler, dataset, out=tmp_path / "store8", request=request, model_id=model_hash(tiny_run),
        show_progress=False,
    )  # fmt: skip
    out = tmp_path / "model"
    exported = run_cli(*export_args(features=store.root), "--pair", PAIRS[0], "--out", out)
    assert exported.exit_code == 0, exported.output
    card = json.loads((out / "card.json").read_text())
    assert card["extraction"]["orientations"] == card["recipe"]["orientations"] == 8
    deployed = load_classifier(out)
    # Extraction as the store's, with predict's noise seeds (by path; the store seeds by row).
    seeds = np.array([image_seed(p) for p in dataset.meta["path"]])
    x0 = to_model_range(torch.from_numpy(np.array(dataset.images)))

    def features(orientations: int) -> np.ndarray:
        extractor = Extractor(
            unet,
            scheduler,
            request=ExtractionRequest(timesteps=(5,), blocks=("dec2@16",), orientations=orientations),
        )
        value = extractor(x0, seeds, 5)["dec2@16"].numpy().astype(np.float16).astype(np.float32)
        extractor.close()
        return value

    deployed_features = deployed.features(np.asarray(dataset.images), seeds)
    np.testing.assert_array_equal(deployed_features, features(8))
    assert not np.array_equal(deployed_features, features(1))  # averaging changes the features


@pytest.mark.parametrize("method", ["simclr", "mae"])
def test_a_baseline_backbone_exports_and_predicts_its_stored_features(
    method, dataset, small_ndsb_zip, export_args, run_cli, tmp_path
):
    """A baseline is deterministic: the deployed classifier's features are the store's exactly."""
    width = {"simclr": 8, "mae": 24}[method]  # MAE: 3 heads of 8
    config = BaselineConfig.for_method(method, width=width, batch_size=8, max_steps=2, checkpoint_every=2)
    run = tmp_path / method
    data = training_rows(dataset, method=method, split=SPLIT)
    BaselineTrainer(config=config, dataset=dataset, data=data, out=run, show_progress=False).train()
    store = extract_baseline_features(run, dataset, out=tmp_path / "store", split=SPLIT, show_progress=False)
    pair = store.pairs[-1]
    out = tmp_path / "model"
    args = export_args(backbone=run, features=store.root)
    exported = run_cli(*args, "--pair", pair, "--object-size", "--out", out)
    assert exported.exit_code == 0, exported.output
    card = json.loads((out / "card.json").read_text())
    assert card["recipe"]["backbone"] == "baseline" and card["backbone"]["method"] == method
    assert card["metrics"]["lineage"] == "checked: unseen"  # trained on the split's train rows only
    assert not (out / "unet").exists() and (out / "baseline" / "model.safetensors").exists()
    deployed = load_classifier(out)
    rows = store.rows
    x = deployed.features(
        np.asarray(dataset.images)[rows], np.zeros(len(rows), np.int64), np.zeros((len(rows), 3))
    )
    np.testing.assert_array_equal(x[:, :-3], np.asarray(store.load(pair), dtype=np.float32))
    run_dir = tmp_path / "run"
    result = run_cli("predict", out, small_ndsb_zip, "--out", run_dir, "--counts", "pcc")
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(run_dir / "predictions.csv")) == len(dataset)
    weights = out / "baseline" / "model.safetensors"
    data_bytes = bytearray(weights.read_bytes())
    data_bytes[len(data_bytes) // 2] ^= 1
    weights.write_bytes(bytes(data_bytes))
    refused = run_cli("predict", out, small_ndsb_zip, "--out", run_dir)
    assert refused.exit_code == 1 and "baseline/model.safetensors: sha256" in refused.output

    # From a probe result on that store: the run is found through the store's own record of it.
    info = json.loads((store.root / "store.json").read_text())
    (store.root / "store.json").write_text(json.dumps(info | {"dataset": str(dataset.root)}))
    result = tmp_path / "result" / "seed0"
    options = {"epochs": 5, "min_steps": 20}
    probe_features(
        store, Split.load(dataset, SPLIT), pairs=[pair], bootstrap=0, out=result, probe_options=options
    )
    from_result = run_cli("export", "--from", result, "--out", tmp_path / "from-result")
    assert from_result.exit_code == 0, from_result.output
    card = json.loads((tmp_path / "from-result" / "card.json").read_text())
    assert card["backbone"]["source"] == str(run.resolve()) and [p["name"] for p in card["pairs"]] == [pair]
