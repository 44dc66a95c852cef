"""Collections: folder and zip listings agree; unsafe archives and missing sources are refused."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plankdiff.data.sources import Collection, SourceError, SourceItem, UnsafeArchiveError

LAYOUT = {
    "copepod": ["a.png", "b.jpg", "c.tif"],
    "diatom": ["d.png", "e.bmp"],
}


def png_bytes(value: int, size=(6, 5)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full(size[::-1], value, np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


def make_folder(root: Path) -> Path:
    for label, files in LAYOUT.items():
        (root / label).mkdir(parents=True)
        for i, name in enumerate(files):
            Image.fromarray(np.full((5, 6), 10 * i, np.uint8), "L").save(root / label / name)
    (root / "notes.txt").write_text("a file at the root carries no class")
    (root / "copepod" / "readme.txt").write_text("not an image suffix")
    return root


def zip_folder(folder: Path, out: Path, *, top: str | None, manifest: str | None = None) -> Path:
    with zipfile.ZipFile(out, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                rel = path.relative_to(folder).as_posix()
                archive.write(path, f"{top}/{rel}" if top else rel)
        if manifest is not None:
            archive.writestr(f"{top}/manifest.csv" if top else "manifest.csv", manifest)
    return out


EXPECTED = [
    SourceItem("copepod/a.png", "copepod"),
    SourceItem("copepod/b.jpg", "copepod"),
    SourceItem("copepod/c.tif", "copepod"),
    SourceItem("diatom/d.png", "diatom"),
    SourceItem("diatom/e.bmp", "diatom"),
]


def test_folder_lists_images_by_class(tmp_path):
    collection = Collection(make_folder(tmp_path / "tree"))
    assert collection.items == EXPECTED
    assert collection.classes == ["copepod", "diatom"]
    assert len(collection) == 5
    assert not collection.is_archive
    assert collection.empty_classes == []


@pytest.mark.parametrize("top", [None, "plankton"])
def test_zip_lists_the_same_items_as_the_folder(tmp_path, top):
    folder = make_folder(tmp_path / "tree")
    archive = Collection(zip_folder(folder, tmp_path / "tree.zip", top=top))
    assert archive.is_archive
    assert archive.prefix == (f"{top}/" if top else "")
    assert archive.items == Collection(folder).items == EXPECTED
    # The bytes handed out are the file's own, through the prefix.
    assert archive.read_bytes("diatom/d.png") == (folder / "diatom" / "d.png").read_bytes()
    assert archive.read_image("copepod/a.png").size == (6, 5)


def test_zip_with_a_single_class_folder_and_no_top_folder(tmp_path):
    archive = tmp_path / "one.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("copepod/a.png", png_bytes(1))
        out.writestr("copepod/b.png", png_bytes(2))
    collection = Collection(archive)
    assert collection.prefix == ""
    assert [(i.path, i.label) for i in collection.items] == [
        ("copepod/a.png", "copepod"),
        ("copepod/b.png", "copepod"),
    ]


def test_manifest_gives_order_labels_and_original_sizes(tmp_path):
    folder = make_folder(tmp_path / "tree")
    manifest = "path,label,orig_width,orig_height,downscaled\ndiatom/e.bmp,diatom,300,40,1\ncopepod/a.png,copepod,6,5,0\n"
    archive = Collection(zip_folder(folder, tmp_path / "m.zip", top="plankton", manifest=manifest))
    assert archive.items == [
        SourceItem("diatom/e.bmp", "diatom", 300, 40),
        SourceItem("copepod/a.png", "copepod", 6, 5),
    ]
    (folder / "manifest.csv").write_text(manifest)
    assert Collection(folder).items == archive.items


def test_manifest_naming_a_missing_file_is_an_error(tmp_path):
    folder = make_folder(tmp_path / "tree")
    (folder / "manifest.csv").write_text("path,label\ncopepod/zzz.png,copepod\n")
    with pytest.raises(SourceError, match="copepod/zzz.png"):
        Collection(folder)


def test_manifest_without_required_columns_is_an_error(tmp_path):
    folder = make_folder(tmp_path / "tree")
    (folder / "manifest.csv").write_text("file,class\ncopepod/a.png,copepod\n")
    with pytest.raises(SourceError, match="lacks the columns"):
        Collection(folder)


def test_real_zip_subset_lists_its_manifest(small_ndsb_zip):
    collection = Collection(small_ndsb_zip)
    assert collection.prefix == "ndsb/"
    assert len(collection) == 48
    assert len(collection.classes) == 4
    assert all(item.orig_width and item.orig_height for item in collection.items)
    first = collection.items[0]
    assert collection.read_image(first.path).size[0] > 1


@pytest.mark.parametrize(
    "member",
    ["../evil.png", "plankton/../../evil.png", "/etc/x.png", "C:/windows/x.png"],
)
def test_unsafe_member_paths_are_refused(tmp_path, member):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("plankton/copepod/a.png", png_bytes(1))
        out.writestr(zipfile.ZipInfo(member), png_bytes(2))
    with pytest.raises(UnsafeArchiveError) as caught:
        Collection(archive)
    assert repr(member) in str(caught.value)
    assert str(archive) in str(caught.value)


def test_symlink_member_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    link = zipfile.ZipInfo("plankton/copepod/link.png")
    link.external_attr = 0o120777 << 16
    link.create_system = 3  # unix
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("plankton/copepod/a.png", png_bytes(1))
        out.writestr(link, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="'plankton/copepod/link.png' is a symbolic link"):
        Collection(archive)


def test_unsafe_archive_error_is_a_source_error():
    assert issubclass(UnsafeArchiveError, SourceError)


def test_empty_class_folder_is_reported_in_a_folder(tmp_path):
    folder = make_folder(tmp_path / "tree")
    (folder / "ostracod").mkdir()
    collection = Collection(folder)
    assert [c.label for c in collection.empty_classes] == ["ostracod"]
    assert collection.empty_classes[0].reason == "empty class folder"
    assert collection.classes == ["copepod", "diatom"]  # still listed without it


def test_empty_class_folder_is_reported_in_a_zip(tmp_path):
    archive = tmp_path / "empty.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("plankton/copepod/a.png", png_bytes(1))
        out.writestr("plankton/ostracod/", "")
    collection = Collection(archive)
    assert [c.label for c in collection.empty_classes] == ["ostracod"]
    assert [i.path for i in collection.items] == ["copepod/a.png"]


def test_class_folder_holding_only_non_images_counts_as_empty(tmp_path):
    folder = make_folder(tmp_path / "tree")
    (folder / "ostracod").mkdir()
    (folder / "ostracod" / "notes.txt").write_text("no images here")
    assert [c.label for c in Collection(folder).empty_classes] == ["ostracod"]


def test_missing_path_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="no such file or folder"):
        Collection(tmp_path / "nowhere")


def test_a_file_that_is_not_a_zip_is_a_source_error(tmp_path):
    path = tmp_path / "data.zip"
    path.write_text("not a zip")
    with pytest.raises(SourceError, match="not a folder and not a zip"):
        Collection(path)


def test_folder_without_class_layout_is_a_source_error(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(SourceError, match="no images found"):
        Collection(tmp_path / "flat")


def test_collection_pickles_without_its_open_archive(tmp_path):
    folder = make_folder(tmp_path / "tree")
    archive = Collection(zip_folder(folder, tmp_path / "tree.zip", top="plankton"))
    archive.read_bytes("copepod/a.png")  # opens the zip handle
    clone = pickle.loads(pickle.dumps(archive))
    assert clone._zip is None
    assert clone.read_bytes("copepod/a.png") == (folder / "copepod" / "a.png").read_bytes()
