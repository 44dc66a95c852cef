"""Predictions as an EcoTaxa import bundle: `ecotaxa_<name>.tsv` and the images beside it, as PNG.

The format, as EcoTaxa's importer reads it (ecotaxa/ecotaxa_back, `py/BO/TSVFile.py`, and its test
bundle `QA/py/data/import_test/m106_mn01_n1_sml/ecotaxa_m106_mn01_n1_sml.tsv`):
- tab-separated, read as latin-1 with `"` as the quote character; field names are lower-cased;
- line 1 the column names, line 2 one type per column, `[t]` text or `[f]` number;
- `img_file_name` is a path relative to the tsv's folder (the images sit beside it);
- `object_date` is `YYYYMMDD` and `object_time` `HHMMSS`, both typed `[t]`;
- `object_annotation_status` is `predicted` for a machine classification, with the category in
  `object_annotation_category`; other `object_*` columns are free (custom) object fields,
  `sample_id` names the sample the object belongs to.

We write plain ASCII (a subset of latin-1, so any reader decodes it the same) and never need quotes:
every value is stripped of tabs, newlines and `"`. An object the classifier abstains on
(`unclassified`) or rejects as unlike its training images (`unknown`) gets an empty category and an
empty status: there is no prediction for EcoTaxa to validate, and a `predicted` status without a
category would claim one. `object_ood_score` is the open-set score (a number; empty for a
classifier exported without one), so the rejected objects can be sorted and looked at in EcoTaxa.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath

from PIL import Image

from plankdiff.data.timestamps import capture_time

FOLDER = "ecotaxa"  # inside the predict output folder: the tsv and its images, ready to zip
TOP_K_COLUMNS = 3
COLUMNS = [
    "img_file_name",
    "object_id",
    "object_date",
    "object_time",
    "object_annotation_category",
    "object_annotation_status",
    *(f"object_top{k}" for k in range(1, TOP_K_COLUMNS + 1)),
    *(f"object_p{k}" for k in range(1, TOP_K_COLUMNS + 1)),
    "object_ood_score",
    "object_source",
    "sample_id",
]
NUMBERS = {*(f"object_p{k}" for k in range(1, TOP_K_COLUMNS + 1)), "object_ood_score"}
TYPES = ["[f]" if name in NUMBERS else "[t]" for name in COLUMNS]
PREDICTED = "predicted"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def ascii_text(value: str) -> str:
    """`value` as ASCII for a tsv cell: accents dropped (é → e), tabs, newlines and quotes as spaces."""
    text = unicodedata.normalize("NFKD", str(value)).encode("ascii", "ignore").decode("ascii")
    return re.sub(r'[\t\r\n"]+', " ", text).strip()


def _id_part(value: str) -> str:
    return _UNSAFE.sub("_", ascii_text(value)).strip("_") or "x"


def object_ids(samples: Sequence[str], keys: Sequence[str]) -> list[str]:
    """One unique ASCII id per image, from its sample and its path inside its input.

    IFCB ROIs keep their dashboard id (`D20220522T000439_IFCB134_00002`), which is unique already;
    other images are `<sample>_<path without suffix>`. Every process computes the same list from
    the same image list, so ids (and the PNG names made from them) never depend on the split.
    """
    ids, seen = [], set()
    for sample, key in zip(samples, keys, strict=True):
        stem = PurePosixPath(key).with_suffix("").as_posix() if key else ""
        base = _id_part(stem) if _is_roi(stem) else _id_part(f"{sample}_{stem}")
        candidate, n = base, 1
        while candidate in seen:  # two names that differ only in unsafe characters
            n += 1
            candidate = f"{base}_{n}"
        seen.add(candidate)
        ids.append(candidate)
    return ids


def _is_roi(stem: str) -> bool:
    name = PurePosixPath(stem).name
    return "/" not in stem and name.startswith(("D", "IFCB")) and capture_time(name) is not None


def row(
    *,
    object_id: str,
    sample: str,
    key: str,
    source: str,
    names: Sequence[str],
    probabilities: Sequence[str],
    decision: str,
    abstained: bool,
    ood_score: str = "",
) -> list[str]:
    """One tsv line (in `COLUMNS` order) for a classified image written as `<object_id>.png`.
    abstained: no category (`unclassified` or `unknown`); ood_score: as predictions.csv writes it."""
    moment: datetime | None = capture_time(key) if key else None
    category = "" if abstained else ascii_text(decision)
    return [
        f"{object_id}.png",
        object_id,
        moment.strftime("%Y%m%d") if moment else "",
        moment.strftime("%H%M%S") if moment else "",
        category,
        PREDICTED if category else "",
        *(ascii_text(n) for n in names),
        *probabilities,
        ood_score,
        ascii_text(source),
        _id_part(sample),
    ]


def write_image(image: Image.Image, folder: Path, object_id: str) -> None:
    """The decoded image as EcoTaxa shows it: the file as read (8-bit, not resized), in PNG."""
    image.save(folder / f"{object_id}.png", format="PNG")


def tsv_name(out_dir: Path) -> str:
    """`ecotaxa_<name>.tsv`, the name EcoTaxa looks for, after the output folder's name."""
    return f"ecotaxa_{_id_part(Path(out_dir).resolve().name)}.tsv"


__all__ = [
    "COLUMNS",
    "FOLDER",
    "PREDICTED",
    "TYPES",
    "ascii_text",
    "object_ids",
    "row",
    "tsv_name",
    "write_image",
]
