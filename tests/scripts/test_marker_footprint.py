"""scripts/marker_footprint.py: what removal changed, on two crafted preparations of 4 images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import fake_prepared, load_script


@pytest.fixture(scope="module")
def script():
    return load_script("marker_footprint")


def prepared(root: Path, images: np.ndarray, markers: str):
    dataset = fake_prepared(root, ["a", "a", "b", "b"])
    np.save(root / "images.npy", images)
    info = json.loads((root / "prepare.json").read_text())
    preprocess = {"background": "normalise"} | ({"markers": "remove"} if markers == "remove" else {})
    (root / "prepare.json").write_text(json.dumps(info | {"preprocess": preprocess}))
    return dataset


def crafted(tmp_path: Path):
    """Every image holds a 16-pixel object of brightness 800. Image 0: untouched. Image 1 (class
    a): a bright 2×2 corner blob removed (4 of 20 object pixels, 800 of 1,600 brightness). Images 2
    and 3 (class b): one faint corner pixel removed (1 of 17 pixels, 8 of 808)."""
    kept = np.zeros((4, 1, 8, 8), np.uint8)
    kept[:, 0, 2:6, 2:6] = 50  # a 16-pixel object of brightness 800 in every image
    kept[1, 0, 0:2, 0:2] = 200  # image 1: a corner blob, 4 pixels, brightness 800
    kept[2:, 0, 7, 7] = 8  # images 2, 3: one faint corner pixel
    removed = kept.copy()
    removed[1, 0, 0:2, 0:2] = 0
    removed[2:, 0, 7, 7] = 0
    return prepared(tmp_path / "kept", kept, "keep"), prepared(tmp_path / "removed", removed, "remove")


def test_footprint_counts_what_removal_turned_to_background(script, tmp_path, capsys):
    kept, removed = crafted(tmp_path)
    f = script.footprint(kept, removed)
    assert f["changed"].tolist() == [False, True, True, True]
    np.testing.assert_allclose(f["pixel_share"], [0, 4 / 20, 1 / 17, 1 / 17])
    np.testing.assert_allclose(f["brightness_share"], [0, 800 / 1600, 8 / 808, 8 / 808])
    script.main([str(kept.root), str(removed.root)])
    out = capsys.readouterr().out
    assert "4 images, 75.0% differ" in out
    assert "images losing over 10 % of their brightness: 25.0%" in out
    assert out.index("  a: 25.0%") < out.index("  b: 1.0%")  # classes, most brightness lost first


def test_footprint_refuses_preparations_in_the_wrong_order_or_of_other_images(script, tmp_path):
    kept, removed = crafted(tmp_path)
    with pytest.raises(SystemExit, match="give the kept one first"):
        script.main([str(removed.root), str(kept.root)])
    other = prepared(tmp_path / "other", np.zeros((4, 1, 4, 4), np.uint8), "remove")
    with pytest.raises(SystemExit, match="not the same images"):
        script.main([str(kept.root), str(other.root)])
