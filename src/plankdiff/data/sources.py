"""Plankton image collections on disk: an ImageFolder tree, or the same tree inside a zip read in place.

A collection lists `SourceItem`s (one image each, with its class and original size when a
manifest gives it) and hands out the raw bytes of each; decoding happens elsewhere, once.
"""

from __future__ import annotations

import csv
import io
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from plankdiff.data.preprocess import ImageRejected, decode

# The most bytes read for one image. Archive members are read in blocks and given up past this,
# whatever size their header claims: a 1.5 MB zip can hold a 1.5 GiB member of zeros.
MAX_FILE_BYTES = 64 * 1024 * 1024
_BLOCK = 1024 * 1024
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif"}
MANIFEST_NAME = "manifest.csv"
# No plankton image file comes near this; a member that inflates past it is a zip bomb or not an image.
MAX_MEMBER_BYTES = 64 * 1024 * 1024


class SourceError(ValueError):
    """A collection that cannot be read as a whole (the message names the file and the problem)."""


class UnsafeArchiveError(SourceError):
    """An archive member that could write or read outside the archive's own tree."""


@dataclass(frozen=True)
class SourceItem:
    path: str  # relative to the collection root, '/'-separated
    label: str
    orig_width: int | None = None
    orig_height: int | None = None


@dataclass
class EmptyClass:
    label: str
    reason: str = "empty class folder"


def _check_member(archive: Path, info: zipfile.ZipInfo) -> None:
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to read")
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} climbs out of the archive with '..'")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(f"{archive}: member {name!r} is a symbolic link; links are not followed")


def read_member(archive: zipfile.ZipFile, name: str, *, limit: int = MAX_MEMBER_BYTES) -> bytes:
    """A zip member's bytes, read in chunks and refused (`ImageRejected`) past `limit` bytes.

    The header's declared size can lie, so the limit is checked on what actually inflates.
    """
    chunks, total = [], 0
    with archive.open(name) as member:
        while chunk := member.read(1 << 20):
            total += len(chunk)
            if total > limit:
                raise ImageRejected(f"member inflates past {limit // (1 << 20)} MiB; not read further")
            chunks.append(chunk)
    return b"".join(chunks)


class Collection:
    """A labelled image collection: `<root>/<class>/<image>`, in a folder or a `.zip`."""

    def __init__(self, source: Path | str):
        self.source = Path(source)
        if not self.source.exists():
            raise SourceError(f"{self.source}: no such file or folder")
        self.is_archive = self.source.is_file()
        if self.is_archive and not zipfile.is_zipfile(self.source):
            raise SourceError(f"{self.source}: not a folder and not a zip archive")
        self._zip: zipfile.ZipFile | None = None
        self.prefix = ""  # the archive's single top-level folder, if it has one
        self.empty_classes: list[EmptyClass] = []
        self.items = self._list()

    # -- listing -------------------------------------------------------------------------------
    def _list(self) -> list[SourceItem]:
        names = self._archive_names() if self.is_archive else self._folder_names()
        manifest = self._read_manifest(names)
        if manifest is not None:
            return manifest
        by_class: dict[str, list[str]] = {}
        for name in names:
            parts = name.split("/")
            if len(parts) < 2:
                continue  # files at the root carry no class
            label = parts[0]
            by_class.setdefault(label, [])
            if PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES:
                by_class[label].append(name)
        items = []
        for label in sorted(by_class):
            if not by_class[label]:
                self.empty_classes.append(EmptyClass(label))
            items.extend(SourceItem(path=name, label=label) for name in sorted(by_class[label]))
        if not items:
            raise SourceError(f"{self.source}: no images found in <class>/<image> layout")
        return items

    def _archive_names(self) -> list[str]:
        archive = self.zipfile
        infos = archive.infolist()
        for info in infos:
            _check_member(self.source, info)
        names = [info.filename for info in infos]
        tops = {name.split("/")[0] for name in names if name.strip("/")}
        # Our archives wrap the class folders in one folder named after the dataset.
        if len(tops) == 1:
            top = tops.pop()
            inner = [n[len(top) + 1 :] for n in names if n.startswith(top + "/")]
            if any("/" in n for n in inner) or MANIFEST_NAME in inner:
                self.prefix = top + "/"
                names = inner
        # Directory entries end in '/'; keep them so an empty class folder is still seen.
        return [n for n in names if n]

    def _folder_names(self) -> list[str]:
        names = []
        for path in sorted(self.source.rglob("*")):
            rel = path.relative_to(self.source).as_posix()
            if path.is_symlink():
                continue
            if path.is_dir() and rel.count("/") == 0:
                names.append(rel + "/")  # a class folder, possibly empty
            elif path.is_file():
                names.append(rel)
        return names

    def _read_manifest(self, names: list[str]) -> list[SourceItem] | None:
        if MANIFEST_NAME not in names:
            return None
        try:
            text = self.read_bytes(MANIFEST_NAME).decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise SourceError(
                f"{self.source}: {MANIFEST_NAME} is not UTF-8 text (byte {error.start}); save it as UTF-8"
            ) from None
        except ImageRejected as error:
            raise SourceError(f"{self.source}: {MANIFEST_NAME}: {error}") from None
        rows = list(csv.DictReader(io.StringIO(text)))
        required = {"path", "label"}
        if not rows or not required <= set(rows[0]):
            raise SourceError(f"{self.source}: {MANIFEST_NAME} lacks the columns {sorted(required)}")
        present = set(names)
        items = []
        for row in rows:
            if row["path"] not in present:
                raise SourceError(f"{self.source}: {MANIFEST_NAME} names {row['path']!r}, which is missing")
            width, height = row.get("orig_width"), row.get("orig_height")
            items.append(
                SourceItem(
                    path=row["path"],
                    label=row["label"],
                    orig_width=int(width) if width else None,
                    orig_height=int(height) if height else None,
                )
            )
        return items

    # -- reading -------------------------------------------------------------------------------
    @property
    def zipfile(self) -> zipfile.ZipFile:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.source)
        return self._zip

    def read_image(self, path: str) -> Image.Image:
        """The decoded 8-bit image (raises `ImageRejected` with the reason when unusable)."""
        return decode(self.read_bytes(path))

    def reopen(self) -> None:
        self._zip = None

    def read_bytes(self, path: str) -> bytes:
        """The file's bytes; `ImageRejected` (with the reason) for a file over `MAX_FILE_BYTES` or an
        archive member whose data is damaged (bad CRC, cut short), so one bad file is skipped."""
        if not self.is_archive:
            file = self.source / path
            if file.stat().st_size > MAX_FILE_BYTES:
                raise ImageRejected(f"file larger than {MAX_FILE_BYTES >> 20} MiB")
            return file.read_bytes()
        blocks, total = [], 0
        try:
            with self.zipfile.open(self.prefix + path) as member:
                while block := member.read(_BLOCK):
                    total += len(block)
                    if total > MAX_FILE_BYTES:
                        raise ImageRejected(f"archive member larger than {MAX_FILE_BYTES >> 20} MiB unpacked")
                    blocks.append(block)
        except (zipfile.BadZipFile, zlib.error, EOFError) as error:
            raise ImageRejected(f"damaged archive member: {error}") from None
        return b"".join(blocks)

    @property
    def classes(self) -> list[str]:
        return sorted({item.label for item in self.items})

    def __len__(self) -> int:
        return len(self.items)

    def __getstate__(self) -> dict:
        # ZipFile handles do not cross process boundaries; each worker reopens the archive.
        state = self.__dict__.copy()
        state["_zip"] = None
        return state
