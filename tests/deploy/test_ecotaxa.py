"""`predict --format ecotaxa`: the bundle must be what EcoTaxa's importer reads (names line, `[t]`/`[f]`
types line, tab-separated ASCII, every image file present as PNG beside the tsv) and must say what
predictions.csv says."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deploy_common import IFCB
from PIL import Image

from plankdiff.deploy import ecotaxa
from plankdiff.deploy.export import UNCLASSIFIED, UNKNOWN

SMHI_BIN = "D20220522T000439_IFCB134"


def read_bundle(out: Path) -> tuple[Path, list[str], list[str], pd.DataFrame]:
    """The tsv as EcoTaxa reads it: latin-1, tab, names on line 1, types on line 2."""
    tsv = next((out / ecotaxa.FOLDER).glob("ecotaxa_*.tsv"))
    raw = tsv.read_bytes()
    raw.decode("ascii")  # raises on any non-ASCII byte
    with open(tsv, newline="", encoding="latin-1") as handle:
        lines = list(csv.reader(handle, delimiter="\t", quotechar='"'))
    names, types, body = lines[0], lines[1], lines[2:]
    assert all(len(line) == len(names) for line in body), "every line has one cell per column"
    return tsv, names, types, pd.DataFrame(body, columns=names)


def check_format(out: Path, predictions: pd.DataFrame) -> pd.DataFrame:
    tsv, names, types, table = read_bundle(out)
    assert tsv.name == f"ecotaxa_{out.resolve().name}.tsv"
    assert set(types) <= {"[t]", "[f]"} and len(types) == len(names)
    typed = dict(zip(names, types, strict=True))
    assert typed["object_id"] == "[t]" and typed["img_file_name"] == "[t]" and typed["object_p1"] == "[f]"
    assert {"object_id", "img_file_name", "object_annotation_category", "object_annotation_status"} <= set(
        names
    )
    assert {"sample_id", "object_date", "object_time", "object_top1", "object_top3", "object_p3"} <= set(
        names
    )
    for name, kind in typed.items():  # numbers parse as numbers
        if kind == "[f]":
            pd.to_numeric(table[name].replace("", np.nan))
    assert table["object_id"].is_unique
    for name in table["img_file_name"]:  # relative to the tsv's folder, a real PNG
        with Image.open(tsv.parent / name) as image:
            assert image.format == "PNG"
    assert len(list(tsv.parent.glob("*.png"))) == len(table)
    # The same images, in the same order, with the decisions predictions.csv has.
    assert len(table) == len(predictions)
    decided = ~predictions["decision"].isin([UNCLASSIFIED, UNKNOWN])
    expected = predictions["decision"].where(decided, "")
    assert table["object_annotation_category"].tolist() == expected.tolist()
    assert (table["object_annotation_status"] == np.where(decided, "predicted", "")).all()
    assert table["object_top1"].tolist() == predictions["top1"].tolist()
    np.testing.assert_allclose(table["object_p1"].astype(float), predictions["p1"].astype(float))
    assert table["object_source"].tolist() == predictions["source"].tolist()
    assert typed["object_ood_score"] == "[f]"
    assert table["object_ood_score"].tolist() == predictions["ood_score"].astype(str).tolist()
    return table


def test_ecotaxa_bundle_of_a_folder_and_a_zip(model, image_folder, small_ndsb_zip, run_cli, tmp_path):
    out = tmp_path / "run-1"
    result = run_cli("predict", model, image_folder, small_ndsb_zip, "--out", out, "--format", "ecotaxa")
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    table = check_format(out, predictions)
    assert set(table["sample_id"]) == {"ndsb-folder", "ndsb"}
    # Images of a folder and members of a zip alike, each written once under a unique id.
    assert table["object_id"].str.startswith("ndsb_").sum() == 48
    # Abstaining rows exist on this tiny classifier, so the empty-category branch is exercised.
    assert (table["object_annotation_category"] == "").any()
    # The PNG is the file as read: the zip member's pixels, not the 32 px network input.
    member = predictions["source"].iloc[-1].split("::", 1)[1]
    png = out / ecotaxa.FOLDER / table["img_file_name"].iloc[-1]
    with (
        zipfile.ZipFile(small_ndsb_zip) as archive,
        Image.open(archive.open(f"ndsb/{member}")) as original,
        Image.open(png) as written,
    ):
        np.testing.assert_array_equal(np.asarray(written), np.asarray(original.convert(written.mode)))


@pytest.mark.skipif(not IFCB.is_dir(), reason=f"IFCB fixtures not found at {IFCB}")
def test_ecotaxa_bundle_of_an_ifcb_bin_has_dashboard_ids_and_capture_time(model, run_cli, tmp_path):
    out = tmp_path / "bins"
    result = run_cli("predict", model, IFCB / "smhi-ifcb134-2022", "--out", out, "--format", "ecotaxa")
    assert result.exit_code == 0, result.output
    table = check_format(out, pd.read_csv(out / "predictions.csv", keep_default_na=False))
    assert table["object_id"].tolist() == [f"{SMHI_BIN}_{n:05d}" for n in range(2, 9)]
    assert (table["sample_id"] == SMHI_BIN).all()
    assert (table["object_date"] == "20220522").all() and (table["object_time"] == "000439").all()


def test_a_csv_run_leaves_no_bundle_from_an_earlier_ecotaxa_run(model, image_folder, run_cli, tmp_path):
    assert run_cli("predict", model, image_folder, "--out", tmp_path, "--format", "ecotaxa").exit_code == 0
    assert (tmp_path / ecotaxa.FOLDER).is_dir()
    assert run_cli("predict", model, image_folder, "--out", tmp_path).exit_code == 0
    assert not (tmp_path / ecotaxa.FOLDER).exists()
    bad = run_cli("predict", model, image_folder, "--out", tmp_path, "--format", "tsv")
    assert bad.exit_code != 0 and "--format" in bad.output


def test_text_is_made_ascii_and_ids_unique():
    assert ecotaxa.ascii_text('Noctilucé\t"x"\n') == "Noctiluce x"
    ids = ecotaxa.object_ids(["s", "s", "s"], ["a b/c.png", "a_b/c.png", "IFCB5_2012_028_081515_00003.png"])
    assert ids == ["s_a_b_c", "s_a_b_c_2", "IFCB5_2012_028_081515_00003"]
