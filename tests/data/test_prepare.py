"""prepare(): counts and layout on real images, cache reuse, skip reports, and resume after a kill."""

from __future__ import annotations

import contextlib
import importlib
import zipfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import kill_9_at_a_random_point
from plankdiff.choices import NOISE_CEILING
from plankdiff.data.prepare import PreparedDataset, prepare
from plankdiff.data.preprocess import PreprocessParams, decode, preprocess
from plankdiff.data.sources import Collection, SourceError
from plankdiff.provenance import read_json

# `plankdiff.data` re-exports the function `prepare`, which hides the module of the same name.
prepare_module = importlib.import_module("plankdiff.data.prepare")


class Interrupted(Exception):
    """Stands for a kill: raised in the parent after some chunks were written."""


def forbid_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("prepare decoded images again instead of reusing the cache")

    monkeypatch.setattr(prepare_module, "_process_chunk", refuse)
    monkeypatch.setattr(prepare_module, "ProcessPoolExecutor", refuse)


def extract(archive: Path, member: str, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as source:
        target.write_bytes(source.read(member))
    return target


# -- a clean real subset ---------------------------------------------------------------------------


def test_counts_and_classes_follow_the_manifest(prepared_small_ndsb, small_ndsb_zip):
    collection = Collection(small_ndsb_zip)
    dataset = prepared_small_ndsb
    assert len(dataset) == len(collection) == 48
    assert dataset.classes == collection.classes
    assert len(dataset.classes) == 4
    assert dataset.info["n_images"] == 48
    assert dataset.info["n_skipped"] == 0
    assert dataset.info["empty_class_folders"] == []
    assert dataset.skipped.empty
    assert dataset.meta["label"].value_counts().to_dict() == dict.fromkeys(dataset.classes, 12)


def test_array_dtype_and_shape(prepared_small_ndsb):
    images = prepared_small_ndsb.images
    assert images.dtype == np.uint8
    assert images.shape == (48, 1, 16, 16)
    assert isinstance(images, np.memmap)
    # the defaults of a new preparation
    assert prepared_small_ndsb.params == PreprocessParams(
        size=16, background="normalise", markers="remove", noise_ceiling=NOISE_CEILING
    )


def test_meta_columns(prepared_small_ndsb, small_ndsb_zip):
    meta = prepared_small_ndsb.meta
    for column in ("path", "label", "class_index", "orig_width", "orig_height", "capture_time", "inverted"):
        assert column in meta.columns, column
    collection = Collection(small_ndsb_zip)
    assert list(meta["path"]) == [item.path for item in collection.items]
    assert list(meta["orig_width"]) == [item.orig_width for item in collection.items]
    assert list(meta["orig_height"]) == [item.orig_height for item in collection.items]
    assert list(meta["class_index"]) == [prepared_small_ndsb.classes.index(label) for label in meta["label"]]
    np.testing.assert_array_equal(prepared_small_ndsb.labels, meta["class_index"].to_numpy())
    assert set(meta["capture_time"]) == {""}  # NDSB file names carry no time
    # NDSB is a shadowgraph: dark objects on white, so every image is inverted.
    assert meta["inverted"].tolist() == [1] * 48


def test_rows_hold_the_right_images(prepared_small_ndsb, small_ndsb_zip):
    """Parallel chunks land in the right rows: each row equals preprocessing its own file."""
    collection = Collection(small_ndsb_zip)
    for row in (0, 13, 30, 47):
        item = collection.items[row]
        expected = preprocess(
            decode(collection.read_bytes(item.path)),
            PreprocessParams(size=16, background="normalise", markers="remove", noise_ceiling=NOISE_CEILING),
            orig_size=(item.orig_width, item.orig_height),
        )
        np.testing.assert_array_equal(prepared_small_ndsb.images[row], expected.pixels)
    # Dark background after polarity normalisation, and a visible object.
    corners = prepared_small_ndsb.images[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert np.median(corners) < 40
    assert (prepared_small_ndsb.images.reshape(48, -1).max(axis=1) > 24).all()


def test_second_call_reuses_the_cache(prepared_small_ndsb, small_ndsb_zip, monkeypatch):
    forbid_decoding(monkeypatch)
    again = prepare(
        small_ndsb_zip,
        name="ndsb-small",
        size=16,
        out_dir=prepared_small_ndsb.root,
        workers=2,
        show_progress=False,
    )
    assert again.key == prepared_small_ndsb.key
    assert again.root == prepared_small_ndsb.root
    np.testing.assert_array_equal(again.images, prepared_small_ndsb.images)


def test_changed_parameter_makes_a_new_key(ndsb_copy, small_ndsb_zip):
    old_key = ndsb_copy.key
    changed = prepare(
        small_ndsb_zip,
        name="ndsb-small",
        size=16,
        normalise_polarity=False,
        out_dir=ndsb_copy.root,
        workers=1,
        show_progress=False,
    )
    assert changed.key != old_key
    assert read_json(ndsb_copy.root / "prepare.json")["key"] == changed.key
    assert changed.meta["inverted"].tolist() == [0] * 48
    # White background kept: the stale inverted array was not reused.
    assert np.median(changed.images[:, 0, 0, 0]) > 200
    assert not list(ndsb_copy.root.glob(".partial-*"))


def test_opening_by_name_uses_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANKDIFF_CACHE", str(tmp_path))
    with pytest.raises(SourceError, match="not a prepared dataset"):
        PreparedDataset.open("nothing-here")
    assert prepare_module.prepared_dir("x") == tmp_path.resolve() / "prepared" / "x"


# -- bad files -------------------------------------------------------------------------------------


@pytest.fixture
def messy_folder(small_ndsb_zip, tmp_path) -> tuple[Path, dict[str, str]]:
    """6 real images in two classes, 4 bad files, and an empty class folder."""
    root = tmp_path / "messy"
    with zipfile.ZipFile(small_ndsb_zip) as archive:
        members = [n for n in archive.namelist() if n.endswith(".jpg")]
    for i, member in enumerate(members[:3] + members[-3:]):
        extract(
            small_ndsb_zip, member, root / ("copepod" if i < 3 else "diatom") / PurePosixPath(member).name
        )
    whole = (root / "copepod" / PurePosixPath(members[0]).name).read_bytes()
    (root / "copepod" / "zero.png").write_bytes(b"")
    (root / "copepod" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "diatom" / "notes.jpg").write_text("this is a text file with an image suffix\n")
    Image.new("L", (1, 1), 255).save(root / "diatom" / "dot.png")
    (root / "ostracod").mkdir()
    reasons = {
        "copepod/zero.png": "zero-byte file",
        "copepod/truncated.jpg": "truncated",
        "diatom/notes.jpg": "not an image",
        "diatom/dot.png": "too small: 1×1 px",
    }
    return root, reasons


def test_bad_files_are_skipped_and_reported(messy_folder, tmp_path):
    root, reasons = messy_folder
    dataset = prepare(root, name="messy", size=16, out_dir=tmp_path / "out", workers=2, show_progress=False)
    assert len(dataset) == 6
    assert dataset.classes == ["copepod", "diatom"]
    assert dataset.meta["label"].value_counts().to_dict() == {"copepod": 3, "diatom": 3}
    assert not set(dataset.meta["path"]) & set(reasons)
    skipped = pd.read_csv(dataset.root / "skipped.csv", keep_default_na=False)
    assert list(skipped.columns) == ["file", "path", "label", "reason"]
    assert sorted(skipped["path"]) == sorted(reasons)
    for _, row in skipped.iterrows():
        assert reasons[row["path"]] in row["reason"], (row["path"], row["reason"])
        assert row["file"] == f"{root}::{row['path']}"
    assert dataset.info["n_skipped"] == 4
    assert dataset.info["empty_class_folders"] == ["ostracod"]
    # Rows of good images are complete, whatever the bad rows next to them lacked.
    assert (dataset.meta["orig_width"] > 1).all()
    assert set(dataset.meta["inverted"]) == {1}


def test_removing_a_file_from_a_folder_makes_a_new_key(messy_folder, tmp_path):
    root, _ = messy_folder
    first = prepare(root, name="messy", size=16, out_dir=tmp_path / "out", workers=1, show_progress=False)
    (root / "diatom" / "notes.jpg").unlink()
    second = prepare(root, name="messy", size=16, out_dir=tmp_path / "out", workers=1, show_progress=False)
    assert second.key != first.key
    assert second.info["n_skipped"] == 3


def test_nothing_usable_is_a_source_error(tmp_path):
    root = tmp_path / "bad"
    (root / "copepod").mkdir(parents=True)
    (root / "copepod" / "zero.png").write_bytes(b"")
    (root / "copepod" / "notes.jpg").write_text("text")
    with pytest.raises(
        SourceError, match=r"none of 2 images could be used \(first problem: copepod/notes.jpg"
    ):
        prepare(root, name="bad", size=16, out_dir=tmp_path / "out", workers=1, show_progress=False)
    assert not (tmp_path / "out" / "prepare.json").exists()


def test_folder_without_images_is_a_source_error(tmp_path):
    (tmp_path / "empty" / "copepod").mkdir(parents=True)
    with pytest.raises(SourceError, match="no images found"):
        prepare(tmp_path / "empty", name="e", size=16, out_dir=tmp_path / "out", show_progress=False)


# -- resume ----------------------------------------------------------------------------------------


def test_interrupted_prepare_resumes_without_recomputing(
    prepared_small_ndsb, small_ndsb_zip, tmp_path, monkeypatch
):
    monkeypatch.setattr(prepare_module, "CHUNK", 16)  # 48 images: chunks 0, 1, 2
    submitted: list[int] = []

    class RecordingPool(ProcessPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            submitted.append(args[0])
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(prepare_module, "ProcessPoolExecutor", RecordingPool)

    @contextmanager
    def killed_after_first_chunk(description, total, enabled=True):
        def advance(n=1, **fields):
            if n:  # called once per written chunk
                raise Interrupted

        yield advance

    real_progress = prepare_module.progress_bar
    monkeypatch.setattr(prepare_module, "progress_bar", killed_after_first_chunk)
    out = tmp_path / "resumed"
    kwargs = dict(name="ndsb-small", size=16, out_dir=out, workers=1, show_progress=False)
    with pytest.raises(Interrupted):
        prepare(small_ndsb_zip, **kwargs)
    assert sorted(submitted) == [0, 1, 2]
    assert not (out / "prepare.json").exists()
    (partial,) = out.glob(".partial-*")
    done = [int(p.stem) for p in (partial / "chunks").glob("*.csv")]
    assert len(done) == 1

    submitted.clear()
    monkeypatch.setattr(prepare_module, "progress_bar", real_progress)
    resumed = prepare(small_ndsb_zip, **kwargs)
    assert sorted(submitted) == sorted({0, 1, 2} - set(done))  # the finished chunk was not recomputed
    assert not partial.exists()
    # Same result as the uninterrupted run (one chunk, two workers).
    assert resumed.key == prepared_small_ndsb.key
    np.testing.assert_array_equal(resumed.images, prepared_small_ndsb.images)
    pd.testing.assert_frame_equal(resumed.meta, prepared_small_ndsb.meta)
    assert resumed.info["n_images"] == 48


# -- capture times ---------------------------------------------------------------------------------


def test_zoolake_capture_times_come_from_file_names(small_zoolake_zip, tmp_path):
    dataset = prepare(
        small_zoolake_zip, name="zoolake-small", size=16, out_dir=tmp_path, workers=2, show_progress=False
    )
    assert len(dataset) == 30
    assert (dataset.meta["capture_time"] != "").all()
    # ZooLake images are bright objects on a dark field: nothing is inverted.
    assert dataset.meta["inverted"].tolist() == [0] * 30
    for path, stamp in zip(dataset.meta["path"], dataset.meta["capture_time"], strict=True):
        micros = int(PurePosixPath(path).name.split("-")[3])
        expected = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=micros)
        moment = datetime.fromisoformat(stamp)
        assert abs(moment - expected) < timedelta(milliseconds=1), path
        assert moment.year == expected.year and moment.year in (2018, 2019, 2020)


KILLED_PREPARE = """
import importlib, sys
module = importlib.import_module("plankdiff.data.prepare")
module.CHUNK = 4  # many small chunks, so the kill lands between and inside them
print("preparing", flush=True)
module.prepare(sys.argv[1], name="killed", size=16, workers=2, out_dir=sys.argv[2], show_progress=False)
"""


@pytest.mark.slow
def test_kill_9_at_a_random_point_then_rerun_equals_an_uninterrupted_prepare(
    small_ndsb_zip, tmp_path, monkeypatch
):
    import time

    import psutil

    module = importlib.import_module("plankdiff.data.prepare")
    monkeypatch.setattr(module, "CHUNK", 4)
    started = time.perf_counter()
    straight = prepare(
        small_ndsb_zip, name="s", size=16, workers=2, out_dir=tmp_path / "s", show_progress=False
    )
    duration = time.perf_counter() - started
    out = tmp_path / "killed"
    killed = kill_9_at_a_random_point(KILLED_PREPARE, small_ndsb_zip, out, ready="preparing", within=duration)
    # The decoding workers die with their parent instead of lingering.
    _, alive = psutil.wait_procs(killed.descendants, timeout=5)
    assert not alive, f"workers left running: {[p.pid for p in alive]}"
    again = prepare(small_ndsb_zip, name="killed", size=16, workers=2, out_dir=out, show_progress=False)
    assert np.array_equal(np.asarray(again.images), np.asarray(straight.images))
    pd.testing.assert_frame_equal(again.meta, straight.meta)
    assert again.key == straight.key
    assert not list(out.glob(".partial-*"))


STUCK_PREPARE = """
import importlib, sys, time
module = importlib.import_module("plankdiff.data.prepare")


def stuck(*_args, **_kwargs):  # a decode that takes a minute, as a huge or hostile image may
    print("decoding", flush=True)
    time.sleep(60)


module.preprocess = stuck  # the workers are forked from here and inherit it
module.prepare(sys.argv[1], name="stuck", size=16, workers=2, out_dir=sys.argv[2], show_progress=False)
"""


def test_workers_stuck_in_a_decode_die_with_a_killed_prepare(small_ndsb_zip, tmp_path):
    import psutil

    # A worker waiting for its next chunk would also see its parent's pipe close; one inside a
    # decode only stops because the kernel kills it (PR_SET_PDEATHSIG).
    killed = kill_9_at_a_random_point(
        STUCK_PREPARE, small_ndsb_zip, tmp_path / "stuck", ready="decoding", within=0.5
    )
    try:
        assert killed.descendants, "no worker was running"
        _, alive = psutil.wait_procs(killed.descendants, timeout=5)
        assert not alive, f"workers left running: {[p.pid for p in alive]}"
    finally:
        for worker in killed.descendants:  # a failed run must not leave them behind either
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()


def test_a_work_folder_left_by_a_kill_after_the_finish_is_removed_on_rerun(small_ndsb_zip, tmp_path):
    """A kill between writing prepare.json and removing `.partial-<key>` left the folder behind
    (seen once in the random kill test); the rerun reuses the preparation and removes it."""
    out = tmp_path / "p"
    first = prepare(small_ndsb_zip, name="p", size=16, workers=1, out_dir=out, show_progress=False)
    leftover = out / f".partial-{first.key[:12]}"
    (leftover / "chunks").mkdir(parents=True)
    again = prepare(small_ndsb_zip, name="p", size=16, workers=1, out_dir=out, show_progress=False)
    assert again.key == first.key
    assert not leftover.exists()
