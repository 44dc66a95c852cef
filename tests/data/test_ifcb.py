"""The IFCB reader against real bins: reference PNGs, ADC row counts, damaged bins, and prepare."""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plankdiff.data.ifcb import (
    IfcbBin,
    IfcbCollection,
    IfcbError,
    find_bins,
    open_collection,
    parse_bin_name,
)
from plankdiff.data.prepare import prepare
from plankdiff.data.sources import Collection
from plankdiff.data.timestamps import capture_time

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "ifcb"
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"IFCB fixtures not found at {FIXTURES}")

SMHI = FIXTURES / "smhi-ifcb134-2022" / "D20220522T000439_IFCB134"
WHOI_NEW = FIXTURES / "whoi-new-format" / "D20130526T095207_IFCB013"
WHOI_OLD = FIXTURES / "whoi-old-format" / "IFCB5_2012_028_081515"
EDGE = FIXTURES / "edge-cases"


def stretch(pixels: np.ndarray) -> np.ndarray:
    """Per-ROI min-max contrast stretch, rounding halves up: how the reference PNGs were written."""
    low, high = int(pixels.min()), int(pixels.max())
    scaled = (pixels.astype(np.float64) - low) * 255 / (high - low)
    return np.floor(scaled + 0.5).astype(np.uint8)


def adc_rois(adc: Path, width_col: int) -> list[int]:
    """1-based rows with a nonzero width and height, straight from the CSV text."""
    rows = list(csv.reader(adc.read_text().splitlines()))
    return [i for i, r in enumerate(rows, 1) if float(r[width_col]) and float(r[width_col + 1])]


def roughness(pixels: np.ndarray) -> float:
    return float(np.abs(np.diff(pixels, axis=0)).mean() + np.abs(np.diff(pixels, axis=1)).mean())


# -- names and timestamps ----------------------------------------------------------------------


def test_parse_new_name():
    name = parse_bin_name("D20130526T095207_IFCB013")
    assert (name.instrument, name.generation) == (13, "new")
    assert name.timestamp == datetime(2013, 5, 26, 9, 52, 7, tzinfo=timezone.utc)


def test_parse_old_name_day_of_year():
    name = parse_bin_name("IFCB5_2012_028_081515")
    assert (name.instrument, name.generation) == (5, "old")
    assert name.timestamp == datetime(2012, 1, 28, 8, 15, 15, tzinfo=timezone.utc)
    assert parse_bin_name("IFCB1_2008_366_000000").timestamp.date().isoformat() == "2008-12-31"  # leap


@pytest.mark.parametrize(
    "stem",
    ["D20130526T095207", "D20131326T095207_IFCB013", "IFCB5_2011_366_081515", "IFCB5_2012_000_081515", "x"],
)
def test_bad_names_raise(stem):
    with pytest.raises(IfcbError, match=stem):
        parse_bin_name(stem)


def test_capture_time_for_ifcb_rois_and_spc_unchanged():
    assert capture_time("D20220522T000439_IFCB134_00002") == datetime(
        2022, 5, 22, 0, 4, 39, tzinfo=timezone.utc
    )
    assert capture_time("bins/IFCB5_2012_028_081515_00003.png") == datetime(
        2012, 1, 28, 8, 15, 15, tzinfo=timezone.utc
    )
    assert capture_time("D20221322T000439_IFCB134_00002") is None  # month 13
    assert capture_time("D20220522T000439_IFCB134") is None  # a bin, not a ROI
    assert capture_time("Daphnia/img_001.png") is None
    assert capture_time("SPC-PWSSC-1500000000-123-4-5.jpeg") == datetime.fromtimestamp(
        1500000000, tz=timezone.utc
    )
    assert capture_time("SPC-PWSSC-0-123.jpeg") is None


# -- reading bins ------------------------------------------------------------------------------


@needs_fixtures
@pytest.mark.parametrize("number", range(2, 9))
def test_rois_match_reference_pngs(number):
    pixels = IfcbBin(SMHI.with_suffix(".roi")).read_roi(number)
    reference = np.asarray(Image.open(SMHI.parent / "png" / f"{SMHI.name}_{number:05d}.png"))
    assert pixels.dtype == np.uint8 and pixels.shape == reference.shape
    # The PNGs were contrast-stretched by their writer; the stored pixels are the truth, and
    # must map onto the PNG exactly (a wrong offset or reshape fails this by a wide margin).
    np.testing.assert_array_equal(stretch(pixels), reference)


@needs_fixtures
def test_smhi_bin_structure():
    ifcb_bin = IfcbBin(SMHI)
    assert ifcb_bin.roi_numbers() == [2, 3, 4, 5, 6, 7, 8]  # row 1 is a trigger without image
    assert int(ifcb_bin.header["roiCount"]) == len(ifcb_bin)
    assert list(ifcb_bin.adc.columns[13:18]) == ["RoiX", "RoiY", "RoiWidth", "RoiHeight", "StartByte"]
    numbers, images = zip(*ifcb_bin, strict=True)
    assert list(numbers) == ifcb_bin.roi_numbers() and images[0].shape == (74, 160)
    # The ROIs tile the .roi file exactly.
    assert sum(im.size for im in images) == SMHI.with_suffix(".roi").stat().st_size


@needs_fixtures
@pytest.mark.parametrize("stem, width_col", [(WHOI_NEW, 15), (WHOI_OLD, 11)])
def test_roi_count_equals_nonempty_adc_rows(stem, width_col):
    expected = adc_rois(stem.with_suffix(".adc"), width_col)
    ifcb_bin = IfcbBin(stem.with_suffix(".adc"))
    assert ifcb_bin.roi_numbers() == expected and len(expected) > 0
    images = [pixels for _, pixels in ifcb_bin]
    assert images[0].shape == ((34, 88) if stem == WHOI_NEW else (45, 96))
    # No reference PNGs here: check the orientation by continuity. Read row by row, neighbouring
    # pixels differ little; the same bytes read column by column give a sheared, rough image.
    for pixels in images:
        other = pixels.reshape(-1).reshape(pixels.shape[::-1]).T.astype(int)
        assert roughness(pixels.astype(int)) < 0.7 * roughness(other)


@needs_fixtures
def test_headers_of_both_generations():
    assert IfcbBin(WHOI_NEW).header["sampleTime"] == "2013-05-26T09:52:07Z"  # agrees with the name
    old = IfcbBin(WHOI_OLD).header
    assert old["SyringeStatus"] == "0" and old["BinarizeThresh"] == "30"


@needs_fixtures
def test_empty_bin_gives_empty_result():
    ifcb_bin = IfcbBin(EDGE / "empty" / "D20150411T205456_IFCB012.hdr")
    assert ifcb_bin.roi_numbers() == [] and len(ifcb_bin) == 0 and list(ifcb_bin) == []
    with pytest.raises(IfcbError, match="no ROIs"):
        IfcbCollection(EDGE / "empty")


@needs_fixtures
def test_partial_bin_names_the_missing_roi_file():
    ifcb_bin = IfcbBin(EDGE / "partial" / "IFCB5_2012_028_081515.adc")
    assert len(ifcb_bin.adc) == 7  # the ADC alone still reads
    with pytest.raises(IfcbError, match=r"IFCB5_2012_028_081515\.roi: missing"):
        ifcb_bin.read_roi(1)
    with pytest.raises(IfcbError, match=r"IFCB5_2012_028_081515\.roi: missing"):
        IfcbCollection(EDGE / "partial")


@needs_fixtures
def test_zero_byte_bin_names_the_empty_header():
    ifcb_bin = IfcbBin(EDGE / "invalid" / "D20130101T101010_IFCB099")
    with pytest.raises(IfcbError, match=r"D20130101T101010_IFCB099\.hdr: empty header"):
        len(ifcb_bin)


def test_truncated_roi_file_and_bad_adc(tmp_path):
    stem = tmp_path / "D20200101T000000_IFCB001"
    stem.with_suffix(".hdr").write_text("imagerID: 1\n")
    row = ["0"] * 24
    row[15:18] = ["4", "3", "0"]
    stem.with_suffix(".adc").write_text(",".join(row) + "\n")
    stem.with_suffix(".roi").write_bytes(bytes(11))
    with pytest.raises(IfcbError, match=r"IFCB001\.roi: truncated: ROI 1 needs bytes 0\.\.12"):
        IfcbBin(stem).read_roi(1)
    stem.with_suffix(".adc").write_text(",".join(row) + "\n1,2,3\n")
    with pytest.raises(IfcbError, match=r"IFCB001\.adc: line 2 has 3 fields"):
        IfcbBin(stem).roi_numbers()
    with pytest.raises(IfcbError, match="not an IFCB file"):
        IfcbBin(stem.with_suffix(".png"))


def test_rows_with_one_zero_side_are_not_rois(tmp_path):
    stem = tmp_path / "D20200101T000000_IFCB001"
    stem.with_suffix(".hdr").write_text("imagerID: 1\n")
    rows = [["0"] * 24 for _ in range(3)]
    rows[0][15:18], rows[1][15:18], rows[2][15:18] = ["4", "0", "0"], ["0", "3", "0"], ["2", "3", "0"]
    stem.with_suffix(".adc").write_text("".join(",".join(r) + "\n" for r in rows))
    stem.with_suffix(".roi").write_bytes(bytes(range(6)))
    ifcb_bin = IfcbBin(stem)
    assert ifcb_bin.roi_numbers() == [3]
    np.testing.assert_array_equal(ifcb_bin.read_roi(3), [[0, 1], [2, 3], [4, 5]])  # stored row by row


@needs_fixtures
def test_find_bins_lists_without_reading():
    bins = find_bins(FIXTURES)
    stems = [b.name.stem for b in bins]
    assert stems == sorted(stems) and len(bins) == 6  # damaged bins are listed too
    with pytest.raises(IfcbError, match="IFCB5_2012_028_081515 appears in more than one folder"):
        IfcbCollection(FIXTURES)


# -- the collection and prepare ----------------------------------------------------------------


@needs_fixtures
def test_collection_labels_from_csv():
    labels_csv = SMHI.with_suffix(".csv")
    expected = {
        f"{SMHI.name}_{row['file_name'][-9:-4]}": row["class_name"]
        for row in csv.DictReader(labels_csv.open())
    }
    collection = IfcbCollection(SMHI.with_suffix(".adc"), labels_csv)
    assert {item.path: item.label for item in collection.items} == expected
    assert collection.classes == ["Ciliophora", "Mesodinium_rubrum", "Strombidium-like"]
    assert collection.items[0].path == "D20220522T000439_IFCB134_00002"
    assert (collection.items[0].orig_width, collection.items[0].orig_height) == (160, 74)
    image = collection.read_image("D20220522T000439_IFCB134_00002")
    assert image.mode == "L" and image.size == (160, 74)
    assert not collection.is_archive and collection.empty_classes == []


@needs_fixtures
def test_collection_unlabelled_and_labelled_only(tmp_path):
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text(
        "file_name,class_name\n"
        "D20130526T095207_IFCB013_00007.png,Guinardia\n"
        "D20220522T000439_IFCB134_00002.png,other-bin\n"  # rows for other bins are ignored
    )
    collection = IfcbCollection(WHOI_NEW, labels_csv)
    assert len(collection) == 19 and collection.classes == ["Guinardia", "unlabelled"]
    only = IfcbCollection(WHOI_NEW, labels_csv, labelled_only=True)
    assert [item.path for item in only.items] == ["D20130526T095207_IFCB013_00007"]
    labels_csv.write_text("file_name,class_name\nD20130526T095207_IFCB013_00008.png,Guinardia\n")
    with pytest.raises(IfcbError, match="labels ROI 8 of D20130526T095207_IFCB013, which has no such ROI"):
        IfcbCollection(WHOI_NEW, labels_csv)


@needs_fixtures
def test_open_collection_dispatch(tmp_path):
    assert isinstance(open_collection(SMHI.with_suffix(".hdr")), IfcbCollection)
    assert isinstance(open_collection(FIXTURES / "whoi-old-format"), IfcbCollection)
    (tmp_path / "Daphnia").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "Daphnia" / "a.png")
    assert isinstance(open_collection(tmp_path), Collection)


@needs_fixtures
def test_prepare_an_ifcb_bin(tmp_path):
    dataset = prepare(
        SMHI.with_suffix(".roi"), name="ifcb-test", size=16, workers=1, out_dir=tmp_path, show_progress=False
    )
    assert len(dataset) == 7 and dataset.images.shape == (7, 1, 16, 16)
    assert list(dataset.meta["path"]) == [f"{SMHI.name}_{n:05d}" for n in range(2, 9)]
    assert set(dataset.meta["capture_time"]) == {"2022-05-22T00:04:39+00:00"}
    assert list(dataset.meta["orig_width"])[:2] == [160, 160]
    assert dataset.skipped.empty
    # A second run with nothing changed reuses the result.
    again = prepare(SMHI, name="ifcb-test", size=16, workers=1, out_dir=tmp_path, show_progress=False)
    assert again.key == dataset.key


@needs_fixtures
def test_prepare_command_reads_ifcb_labels(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from plankdiff.cli import app
    from plankdiff.data.prepare import PreparedDataset

    monkeypatch.setenv("PLANKDIFF_CACHE", str(tmp_path))
    labels = SMHI.parent / f"{SMHI.name}.csv"
    result = CliRunner().invoke(
        app, ["data", "prepare", str(SMHI.parent), "--name", "smhi", "--size", "16", "--labels", str(labels)]
    )
    assert result.exit_code == 0, result.output
    meta = PreparedDataset.open("smhi").meta
    with open(labels, newline="") as handle:
        expected = {
            row["file_name"].removesuffix(".png"): row["class_name"] for row in csv.DictReader(handle)
        }
    assert len(meta) == 7
    assert dict(zip(meta["path"], meta["label"], strict=True)) == expected


# -- targets as the reference reader gives them: stitching, volume analysed ---------------------

EXPECTED = FIXTURES / "expected"


@pytest.fixture(scope="module")
def reference() -> dict:
    import json

    return json.loads((EXPECTED / "reference.json").read_text())


@needs_fixtures
def test_old_format_split_roi_is_stitched_into_one_target(reference):
    ifcb_bin = IfcbBin(WHOI_OLD)
    expected = reference[WHOI_OLD.name]
    assert ifcb_bin.roi_numbers() == expected["raw_roi_numbers"]  # raw ROIs untouched: 6
    assert ifcb_bin.targets() == expected["stitched_roi_numbers"]  # 5 targets
    for number, (height, width) in expected["stitched_shapes"].items():
        assert ifcb_bin.target_size(int(number)) == (width, height)
    stitched = np.array(Image.open(EXPECTED / "IFCB5_2012_028_081515_00003_stitched.png"))
    np.testing.assert_array_equal(ifcb_bin.read_target(3), stitched)
    # The collection counts organisms, not ROIs: 5 items, and item 3 is the stitched image.
    collection = IfcbCollection(WHOI_OLD)
    assert [item.path for item in collection.items] == [
        f"IFCB5_2012_028_081515_{n:05d}" for n in (1, 2, 3, 5, 6)
    ]
    np.testing.assert_array_equal(np.array(collection.read_image("IFCB5_2012_028_081515_00003")), stitched)


@needs_fixtures
@pytest.mark.parametrize("stem", [SMHI, WHOI_NEW])
def test_new_format_bins_are_not_stitched(stem, reference):
    ifcb_bin = IfcbBin(stem)
    assert ifcb_bin.targets() == reference[stem.name]["raw_roi_numbers"]


@needs_fixtures
@pytest.mark.parametrize("stem", [WHOI_OLD, WHOI_NEW, SMHI])
def test_ml_analyzed_matches_the_reference_reader(stem, reference):
    assert IfcbBin(stem).ml_analyzed == pytest.approx(reference[stem.name]["ml_analyzed"], rel=1e-6)


@needs_fixtures
def test_empty_bin_has_no_targets_but_a_volume():
    ifcb_bin = IfcbBin(EDGE / "empty" / "D20150411T205456_IFCB012")
    assert ifcb_bin.targets() == []
    # runTime 0.621083 s minus inhibitTime 0.037422 s at 0.25 mL/min, from the header.
    assert ifcb_bin.ml_analyzed == pytest.approx((0.621083 - 0.037422) * 0.25 / 60, rel=1e-9)
