"""scripts/blank_images.py: on a folder with one frame-filling object (which the uncapped border
estimate blanks) and small objects (which the ceiling leaves alone), the counts come out as built."""

from __future__ import annotations

import numpy as np
from PIL import Image

from helpers import load_script


def test_counts_blank_and_changed_images_per_class(tmp_path, capsys):
    folder = tmp_path / "images"
    for label in ("salp", "copepod"):
        (folder / label).mkdir(parents=True)
    filling = np.full((60, 60), 255, np.uint8)
    filling[10:50] = (40 + np.arange(40)[:, None] + np.arange(60)[None] // 2).astype(np.uint8)
    Image.fromarray(filling, "L").save(folder / "salp" / "filling.png")
    for i in range(3):  # small dark objects on white: the same with or without the ceiling
        small = np.full((40, 40), 250, np.uint8)
        small[10 + i : 20 + i, 12:28] = 30
        Image.fromarray(small, "L").save(folder / "copepod" / f"{i}.png")
        Image.fromarray(small, "L").save(folder / "salp" / f"small{i}.png")
    script = load_script("blank_images")
    counts, per_class = script.compare(folder, tmp_path / "out", size=16)
    assert counts == {
        "dataset": "images",
        "images": 7,
        "blank without the ceiling": 1,
        "blank with the ceiling": 0,
        "pixels changed": 1,
    }
    assert per_class.to_dict("records") == [
        {"label": "salp", "images": 4, "blank_without": 1, "blank_with": 0, "changed": 1}
    ]
    script.main([str(folder), "--out", str(tmp_path / "out"), "--size", "16"])
    assert "| images | 7 | 1 | 0 | 1 |" in capsys.readouterr().out
