"""Processing shifts: each transform does what its name says, deterministically; the shift zips are
read by `prepare`; the table reports the selected probe per shift and the drop from clean."""

from __future__ import annotations

import time
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from plankdiff.data.prepare import prepare
from plankdiff.data.preprocess import border_level
from plankdiff.data.sources import Collection
from plankdiff.data.splits import long_tailed_split
from plankdiff.evaluation.processing_shift import (
    DEFAULT_SHIFTS,
    SHIFT_NAMES,
    Combined,
    CornerDisc,
    GreyBackground,
    HalfContrast,
    InvertedPolarity,
    JpegRecompression,
    Rescaled,
    apply_shift,
    build_shift_zips,
    extract_like,
    image_rng,
    prepare_shifts,
    processing_shift_scores,
    processing_shift_table,
    shift_source_rows,
    shifted_sets,
    split_test_paths,
)
from plankdiff.features.raw import raw_pixel_store, stored_orientations
from plankdiff.probe.run import probe_features


def synthetic(background: int = 10, value: int = 200, size: tuple[int, int] = (80, 60)) -> Image.Image:
    """A flat background with a textured object in the middle: width × height = size."""
    width, height = size
    array = np.full((height, width), background, np.float64)
    yy, xx = np.mgrid[20:40, 25:55]
    array[20:40, 25:55] = value + 30 * ((xx + yy) % 2) - 15  # a 1-px checkerboard inside the object
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "L")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int64)


def run(transform, image, path="class/a.jpg", seed=0):
    return apply_shift(transform, image, seed=seed, path=path)


@pytest.mark.parametrize("background", [10, 245])
def test_grey_background_moves_the_border_to_mid_grey_with_noise(background):
    value = 200 if background < 128 else 40
    out = run(GreyBackground(), synthetic(background, value))
    level, spread = border_level(pixels(out).astype(float))
    assert abs(level - 128) <= 2
    assert 9 <= spread <= 15  # the 12-level noise
    centre = pixels(out)[25:35, 30:50].mean()
    assert (centre > 128 + 20) if background < 128 else (centre < 128 - 20)  # object kept its side


def test_inverted_is_the_negative():
    image = synthetic()
    np.testing.assert_array_equal(pixels(run(InvertedPolarity(), image)), 255 - pixels(image))


def test_jpeg_decodes_differs_a_little_and_draws_its_quality_per_image():
    image = synthetic()
    out = run(JpegRecompression(), image)
    assert out.mode == "L" and out.size == image.size
    difference = np.abs(pixels(out) - pixels(image))
    assert 0 < difference.mean() < 10
    # Different images draw different qualities from 50..75: some outputs differ for the same pixels.
    outs = {run(JpegRecompression(), image, path=f"c/{i}.jpg").tobytes() for i in range(12)}
    assert len(outs) > 1
    with pytest.raises(ValueError, match="JPEG qualities"):
        JpegRecompression(quality_low=80, quality_high=60)


def test_rescaled_keeps_the_size_and_loses_fine_detail():
    image = synthetic()
    out = run(Rescaled(), image)
    assert out.size == image.size
    texture = pixels(image)[22:38, 27:53].std()
    assert pixels(out)[22:38, 27:53].std() < texture / 3  # the 1-px checkerboard is averaged away
    assert abs(pixels(out)[5, 5] - 10) <= 1  # flat background unchanged


@pytest.mark.parametrize(("background", "ink"), [(10, 255), (245, 0)])
def test_corner_disc_adds_ink_only_in_one_corner(background, ink):
    image = synthetic(background, 255 - background)
    out = run(CornerDisc(), image)
    changed = pixels(out) != pixels(image)
    rows, cols = np.nonzero(changed)
    assert 60 <= changed.sum() <= 130  # radius round(60 × 0.08) = 5: ≈ π·5.5² ≈ 95 pixels
    assert (pixels(out)[changed] == ink).all()  # bright on dark, dark on white: the object's ink
    height, width = changed.shape
    in_corner = ((rows < 20) | (rows >= height - 20)) & ((cols < 20) | (cols >= width - 20))
    assert in_corner.all()
    assert (
        len({(r < height // 2, c < width // 2) for r, c in zip(rows, cols, strict=True)}) == 1
    )  # one corner
    assert not changed[[0, -1]].any() and not changed[:, [0, -1]].any()  # the border stays background


def test_half_contrast_halves_the_distance_from_the_background():
    out = pixels(run(HalfContrast(), synthetic(10, 200)))
    assert out[0, 0] == 10
    assert abs(out[25:35, 30:50].mean() - (10 + 190 / 2)) <= 1


def test_combined_applies_its_steps_in_order_from_one_generator():
    image = synthetic(245, 40)
    out = run(Combined(), image)
    assert [type(step) for step in Combined().steps] == [
        GreyBackground,
        CornerDisc,
        Rescaled,
        JpegRecompression,
    ]
    # The steps taken by hand, drawing from the image's own generator, give the same bytes.
    rng = image_rng(0, "combined", "class/a.jpg")
    expected = image
    for step in Combined().steps:
        expected = step(expected, rng)
    assert expected.tobytes() == out.tobytes()
    level, _ = border_level(pixels(out).astype(float))
    assert abs(level - 128) <= 3  # the grey background survives resizing and JPEG
    assert pixels(out)[30, 40] < 128 - 20  # the dark object stays darker than the background
    assert (
        run(Combined(steps=(InvertedPolarity(),)), image).tobytes()
        == run(InvertedPolarity(), image).tobytes()
    )
    with pytest.raises(ValueError, match="at least one step"):
        Combined(steps=())


@pytest.mark.parametrize("shift", SHIFT_NAMES)
def test_every_shift_is_deterministic_under_its_seed(shift):
    image = synthetic()
    transform = DEFAULT_SHIFTS[shift]
    assert run(transform, image).tobytes() == run(transform, image).tobytes()
    assert run(transform, image).mode == image.mode
    if shift in ("grey-background", "combined"):  # noise: another seed draws other noise
        assert run(transform, image, seed=1).tobytes() != run(transform, image).tobytes()


def test_rgb_images_keep_their_mode():
    image = synthetic().convert("RGB")
    for transform in DEFAULT_SHIFTS.values():
        assert run(transform, image).mode == "RGB", transform.name


# -- zips on real NDSB images, and the table ---------------------------------------------------------


@pytest.fixture(scope="module")
def clean_and_shifted(small_ndsb_zip, tmp_path_factory):
    """The 48-image NDSB subset prepared (16 px, normalised), its long-tailed split, and shift zips
    of its test images."""
    root = tmp_path_factory.mktemp("shift")
    clean = prepare(small_ndsb_zip, name="shift-clean", size=16, workers=1, show_progress=False)
    split = long_tailed_split(clean)
    zips = build_shift_zips(
        small_ndsb_zip,
        out_dir=root / "zips",
        paths=split_test_paths(clean, split),
        shifts=["inverted", "jpeg"],
    )
    return root, clean, split, zips


def test_shift_zips_have_the_shared_layout_and_prepare_reads_them(
    clean_and_shifted, small_ndsb_zip, monkeypatch
):
    root, clean, split, zips = clean_and_shifted
    assert set(zips) == {"inverted", "jpeg"}
    test_rows = split.indices("test")
    source = Collection(small_ndsb_zip)
    for shift, path in zips.items():
        collection = Collection(path)
        assert collection.prefix == f"ndsb-{shift}/"
        assert len(collection) == len(test_rows)
        assert [i.label for i in collection.items] == clean.meta["label"].iloc[test_rows].tolist()
        originals = {i.path: i for i in source.items}
        with zipfile.ZipFile(path) as archive:
            manifest = archive.read(f"ndsb-{shift}/manifest.csv").decode()
        assert "source_path" in manifest.splitlines()[0]
        for item in collection.items:  # the original size travels with the shifted image
            original = originals[item.path[: -len(".png")] + ".jpg"]
            assert (item.orig_width, item.orig_height) == (original.orig_width, original.orig_height)
    # Built again an hour later: the same bytes (seeded per image; no member carries the clock).
    later = time.time() + 3600
    monkeypatch.setattr(time, "time", lambda: later)
    again = build_shift_zips(
        small_ndsb_zip, out_dir=root / "again", paths=split_test_paths(clean, split), shifts=["jpeg"]
    )
    assert again["jpeg"].read_bytes() == zips["jpeg"].read_bytes()
    with pytest.raises(ValueError, match="unknown shift"):
        build_shift_zips(small_ndsb_zip, out_dir=root / "x", shifts=["blur"])


def test_table_scores_the_clean_probe_on_each_shift(clean_and_shifted):
    root, clean, split, zips = clean_and_shifted
    stores = {"clean": raw_pixel_store(clean, rows=np.arange(len(clean)), out=root / "f-clean")}
    shifted_stores, prepared = {}, {}
    for shift, path in zips.items():
        prepared[shift] = prepare(path, name=f"shift-{shift}", size=16, workers=1, show_progress=False)
        rows = np.arange(len(prepared[shift]))
        shifted_stores[shift] = raw_pixel_store(prepared[shift], rows=rows, out=root / f"f-{shift}")
    result = probe_features(
        stores["clean"],
        split,
        shifted=shifted_sets(shifted_stores, split),
        bootstrap=0,
        probe_options={"epochs": 5, "min_steps": 50},
    )
    table = processing_shift_table(result)
    assert table["set"].tolist() == ["clean", "inverted", "jpeg"]
    clean_row = table.iloc[0]
    assert clean_row["accuracy"] == result.test["accuracy"] and clean_row["accuracy_drop"] == 0
    assert (table["n"] == len(split.indices("test"))).all()
    for _, row in table.iloc[1:].iterrows():
        assert row["accuracy"] == result.shifted[row["set"]]["accuracy"]
        assert row["accuracy_drop"] == pytest.approx(clean_row["accuracy"] - row["accuracy"])
        assert row["macro_f1_drop"] == pytest.approx(clean_row["macro_f1"] - row["macro_f1"])
    # Polarity normalisation undoes an inversion exactly: the same pixels, no drop.
    np.testing.assert_array_equal(prepared["inverted"].images, clean.images[split.indices("test")])
    assert table.set_index("set").loc["inverted", "accuracy_drop"] == 0
    assert bool(table.set_index("set").loc["inverted", "meets_goal"])
    with pytest.raises(ValueError, match="not scored on shift"):
        processing_shift_table(result, ["rescaled"])


# -- prepared like the clean set, features of the same kind, and the CLI ------------------------------


def test_prepare_shifts_makes_test_images_prepared_like_the_clean_set(
    clean_and_shifted, small_ndsb_zip, tmp_path
):
    _, clean, split, _ = clean_and_shifted
    shifted = prepare_shifts(
        small_ndsb_zip, clean, split, out_dir=tmp_path / "zips", name="like", shifts=["inverted", "rescaled"]
    )
    assert set(shifted) == {"inverted", "rescaled"}
    for dataset in shifted.values():
        assert dataset.params == clean.params
        np.testing.assert_array_equal(shift_source_rows(dataset, clean), split.indices("test"))
    np.testing.assert_array_equal(shifted["inverted"].images, clean.images[split.indices("test")])


def test_prepare_shifts_refuses_images_that_are_not_test_rows(
    clean_and_shifted, small_ndsb_zip, tmp_path, monkeypatch
):
    """Shifted images are scored as test images: built from training rows, they must be refused."""
    from plankdiff.evaluation import processing_shift

    _, clean, split, _ = clean_and_shifted
    train_paths = clean.meta["path"].iloc[split.indices("train")].tolist()
    monkeypatch.setattr(processing_shift, "split_test_paths", lambda dataset, s: train_paths)
    with pytest.raises(ValueError, match="not test images of split"):
        prepare_shifts(small_ndsb_zip, clean, split, out_dir=tmp_path / "zips", name="leak", shifts=["jpeg"])


def test_extract_like_and_scores_on_raw_pixels(clean_and_shifted, small_ndsb_zip, tmp_path):
    root, clean, split, _ = clean_and_shifted
    store = raw_pixel_store(clean, rows=np.arange(len(clean)), out=tmp_path / "clean", orientations=8)
    shifted = prepare_shifts(
        small_ndsb_zip, clean, split, out_dir=tmp_path / "zips", name="x", shifts=["inverted"]
    )
    other = extract_like(store, shifted["inverted"], out=tmp_path / "inverted")
    assert stored_orientations(other.info) == 8 and other.pairs == store.pairs
    np.testing.assert_array_equal(
        other.load("pixels"), store.load("pixels")[store.positions(split.indices("test"))]
    )
    with pytest.raises(ValueError, match="no pair"):
        extract_like(store, shifted["inverted"], out=tmp_path / "y", pairs=["mid@4/t=5"])
    result, table = processing_shift_scores(
        store, split, {"inverted": other}, bootstrap=0, probe_options={"epochs": 3, "min_steps": 20}
    )
    assert table["set"].tolist() == ["clean", "inverted"] and table["accuracy_drop"].iloc[1] == 0


def test_the_cli_scores_the_shifts_and_writes_sha_and_config(clean_and_shifted, tmp_path):
    import json

    from typer.testing import CliRunner

    from plankdiff.cli import app

    _, clean, split, _ = clean_and_shifted
    split.save(clean)
    store = raw_pixel_store(clean, rows=np.arange(len(clean)), out=tmp_path / "clean")
    out = tmp_path / "cli"
    args = [
        "evaluate",
        "shift",
        str(store.root),
        "--split",
        split.name,
        "--shift",
        "inverted",
        "--shift",
        "jpeg",
    ]
    result = CliRunner().invoke(app, [*args, "--epochs", "2", "--min-steps", "10", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "evaluation.json").read_text())
    assert record["git_sha"] and record["config"]["shifts"] == ["inverted", "jpeg"]
    assert [row["set"] for row in record["table"]] == ["clean", "inverted", "jpeg"]
    assert (out / "processing_shift.csv").exists() and (out / "features" / "jpeg" / "store.json").exists()
    bad = CliRunner().invoke(app, [*args[:5], "--source", str(tmp_path / "missing.zip")])
    assert bad.exit_code == 1 and "--source" in bad.output


def test_shifted_dataset_scores_extracts_each_shift_beside_the_others_and_scores_them(
    clean_and_shifted, small_ndsb_zip, tmp_path
):
    from plankdiff.evaluation.processing_shift import shifted_dataset_scores

    _, clean, split, _ = clean_and_shifted
    store = raw_pixel_store(clean, rows=np.arange(len(clean)), out=tmp_path / "clean")
    shifted = prepare_shifts(
        small_ndsb_zip, clean, split, out_dir=tmp_path / "zips", name="x", shifts=["inverted", "jpeg"]
    )
    probe = {"bootstrap": 0, "probe_options": {"epochs": 3, "min_steps": 20}}
    result, table = shifted_dataset_scores(
        store, split, shifted, features_dir=tmp_path / "features", prefix="raw-", **probe
    )
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == ["raw-inverted", "raw-jpeg"]
    by_hand = {s: extract_like(store, d, out=tmp_path / "hand" / s) for s, d in shifted.items()}
    _, expected = processing_shift_scores(store, split, by_hand, **probe)
    pd.testing.assert_frame_equal(table, expected)
    assert table["set"].tolist() == ["clean", "inverted", "jpeg"]
