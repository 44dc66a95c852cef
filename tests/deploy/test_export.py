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
from deploy_common import PAIRS, SPLIT

from plankdiff.data.lineage import TRAINING_IMAGES_FILE, write_training_images
from plankdiff.data.splits import Split
from plankdiff.deploy.export import image_seed, load_classifier
from plankdiff.deploy.predict import predict
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
    assert card["recipe"] == {"object_size": True, "fused_pairs": 2, "orientations": 1}
    assert card["metrics"]["lineage"] == "checked: unseen"
    assert card["metrics"]["source"]["result"] == str(result.resolve())
    deployed = load_classifier(out)
    assert deployed.probe.n_features == 16 + 3 + 32 + 3  # [dec2@16, size, enc2@8, size], as load_pairs builds

    # The probe on the stored features (as the probe result read them) = the deployed classifier on
    # the prepared pixels with the prepared sizes = predict on the raw zip.
    store = FeatureStore(Path(json.loads((result / "selected.json").read_text())["features"]))
    positions = np.arange(len(store.rows))
    by_pair = load_pairs(store, PAIRS, positions, with_size=True)
    stored = deployed.probe.predict_proba(np.concatenate([by_pair[p] for p in PAIRS], axis=1))
    meta = dataset.meta
    sizes = by_pair[PAIRS[0]][:, -3:]
    pixels = deployed.predict_proba(
        np.asarray(dataset.images), np.array([image_seed(p) for p in meta["path"]]), sizes
    )
    np.testing.assert_array_equal(pixels.argmax(1), stored.argmax(1))
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
