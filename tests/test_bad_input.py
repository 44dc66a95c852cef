"""Bad and hostile input (issue #18): every case is refused with a named cause, skipped and listed,
resumed, or bounded in memory. Inputs are built here, a few KB each (the bombs are a few MB on disk)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import write_store
from plankdiff.data.prepare import PreparedDataset, prepare
from plankdiff.data.preprocess import MAX_PIXELS, PreprocessParams
from plankdiff.data.sources import MAX_FILE_BYTES, SourceError
from plankdiff.data.splits import Split, SplitMismatch, long_tailed_split
from plankdiff.diffusion.checkpoint import CheckpointError
from plankdiff.features.store import FeatureStore, StoreMismatch
from plankdiff.probe.run import Shifted, probe_features
from plankdiff.provenance import read_json

SRC = Path(__file__).resolve().parents[1] / "src"
CLASSES = ("copepod", "diatom", "ostracod")


def picture(seed: int, size: int = 20) -> Image.Image:
    """A bright blob on a dark background whose position depends on the class (seed // 100)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 30, (size, size), dtype=np.uint8)
    row = 3 + 5 * (seed // 100)
    pixels[row : row + 4, 4:14] = 220
    return Image.fromarray(pixels, "L")


def image_folder(root: Path, per_class: int = 10, classes=CLASSES, first: int = 0) -> Path:
    for c, label in enumerate(classes):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            picture(100 * c + first + i).save(root / label / f"{i:03d}.png")
    return root


def zip_of(folder: Path, out: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*.png")):
            archive.write(path, path.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return out


def prepared(root: Path, name: str = "tiny", **kwargs) -> PreparedDataset:
    return prepare(
        root,
        name=name,
        size=16,
        workers=1,
        out_dir=root.parent / f"prep-{name}",
        show_progress=False,
        **kwargs,
    )


@pytest.fixture
def dataset(tmp_path) -> PreparedDataset:
    return prepared(image_folder(tmp_path / "images"))


def store_for(dataset: PreparedDataset, root: Path, *, dim: int = 4) -> FeatureStore:
    """A store whose one pair is the class index plus noise: a probe reads it perfectly."""
    features = np.random.default_rng(0).normal(0, 0.05, (len(dataset), dim))
    features[:, 0] += dataset.labels * 3
    return write_store(dataset, root, {"x": features})


# -- 1-3: never a number from the wrong data ---------------------------------------------------------


def test_split_of_another_preparation_is_refused(tmp_path):
    images = image_folder(tmp_path / "images")
    first = prepared(images)
    name = long_tailed_split(first).name
    long_tailed_split(first).save(first)
    assert Split.load(first, name).summary()["classes"] == 3
    # The same name prepared again from changed images: the saved rows point at other pictures.
    shutil.rmtree(images / "copepod")
    image_folder(images, classes=("copepod",), per_class=4, first=50)
    again = prepare(images, name="tiny", size=16, workers=1, out_dir=first.root, show_progress=False)
    assert again.key != first.key and (again.root / "splits" / f"{name}.csv").exists()
    with pytest.raises(
        SplitMismatch,
        match=r"split '\S+' was made on another preparation of 'tiny' \(key \w{12}, now \w{12}\)",
    ):
        Split.load(again, name)


def test_split_that_records_no_preparation_is_refused(dataset):
    path = long_tailed_split(dataset).save(dataset)
    info = read_json(path.with_suffix(".json"))
    del info["dataset_key"]  # written before splits recorded their preparation
    path.with_suffix(".json").write_text(json.dumps(info))
    with pytest.raises(SplitMismatch, match="unrecorded preparation of 'tiny'"):
        Split.load(dataset, path.stem)


def test_store_of_another_preparation_is_refused(dataset, tmp_path):
    store = store_for(dataset, tmp_path / "store")
    store.check_dataset(dataset)  # its own dataset passes
    info = store.info | {"dataset_key": "0" * 64}
    (store.root / "store.json").write_text(json.dumps(info))
    with pytest.raises(
        StoreMismatch, match=r"store\.json: features of dataset key 000000000000, but .* is key"
    ):
        store.check_dataset(dataset)


def test_shifted_set_is_matched_by_class_name(dataset, tmp_path):
    store = store_for(dataset, tmp_path / "store")
    split = long_tailed_split(dataset)
    # The same data listed with its classes in another order: scored by name, still perfect.
    order = [2, 0, 1]
    reordered = Split(
        "reordered",
        split.rows,
        np.where(split.targets >= 0, np.argsort(order)[split.targets], -1),
        [split.classes[i] for i in order],
    )
    result = probe_features(store, split, shifted=[Shifted("same", store, reordered)], bootstrap=0)
    assert result.test["accuracy"] == 1.0
    assert result.shifted["same"]["accuracy"] == 1.0
    # Same number of classes, other names: refused, never scored by position.
    renamed = Split("renamed", split.rows, split.targets, ["a", "b", "c"])
    with pytest.raises(
        ValueError, match=r"shifted set other: its classes differ.*not in the probe: \['a', 'b', 'c'\]"
    ):
        probe_features(store, split, shifted=[Shifted("other", store, renamed)], bootstrap=0)


@pytest.mark.parametrize("protocol", ["linear", "knn"])
def test_probe_without_validation_rows_is_refused_before_writing(dataset, tmp_path, protocol):
    store = store_for(dataset, tmp_path / "store")
    split = long_tailed_split(dataset)
    split.rows["train"] = np.concatenate([split.rows["train"], split.rows["val"]])
    split.rows["val"] = split.rows["val"][:0]
    with pytest.raises(ValueError, match=f"split '{split.name}': no val rows; nothing to probe on"):
        probe_features(store, split, protocol=protocol, out=tmp_path / "out", bootstrap=0)
    assert not (tmp_path / "out").exists()


# -- refused with a named cause: a table ------------------------------------------------------------


def _manifest_not_utf8(tmp_path):
    folder = image_folder(tmp_path / "m", per_class=2)
    (folder / "manifest.csv").write_bytes("path,label\ncopepod/000.png,cop\xe9pod\n".encode("latin-1"))
    prepared(folder)


def _truncated_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"diffusion": {"preset": "ti')
    read_json(path)


def _no_images(tmp_path):
    (tmp_path / "empty" / "copepod").mkdir(parents=True)
    prepared(tmp_path / "empty")


def _all_checkpoints_damaged(tmp_path):
    from plankdiff.diffusion.checkpoint import resume_point

    step = tmp_path / "checkpoints" / "step_0000003"
    step.mkdir(parents=True)
    for name in ("model.safetensors", "ema.safetensors", "state.pt"):
        (step / name).write_bytes(b"\x00" * 10)
    resume_point(tmp_path / "checkpoints")


REFUSED = [
    ("size too small", lambda _: PreprocessParams(size=4), ValueError, "--size 4: must be between 8"),
    ("size too large", lambda _: PreprocessParams(size=100_000), ValueError, "--size 100000"),
    ("channels", lambda _: PreprocessParams(channels=2), ValueError, "--channels 2: must be 1 or 3"),
    ("mode", lambda _: PreprocessParams(mode="stretch"), ValueError, "--mode 'stretch'"),
    ("manifest not UTF-8", _manifest_not_utf8, SourceError, r"manifest\.csv is not UTF-8 text"),
    ("truncated config.json", _truncated_json, ValueError, r"config\.json: not valid JSON \(truncated"),
    ("no images", _no_images, SourceError, "no images found"),
    (
        "every checkpoint damaged",
        _all_checkpoints_damaged,
        CheckpointError,
        r"no readable checkpoint.*model\.safetensors: unreadable",
    ),
]


@pytest.mark.parametrize(("case", "build", "error", "message"), REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_with_a_named_cause(tmp_path, case, build, error, message):
    with pytest.raises(error, match=message) as caught:
        build(tmp_path)
    assert "\n" not in str(caught.value), f"{case}: the message must be one line"


# -- skipped and listed ---------------------------------------------------------------------------------


def _bad_crc_member(archive: Path, name: str) -> None:
    """Flip one byte of a stored member's data in place: its CRC no longer matches."""
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo(name)
    data = bytearray(archive.read_bytes())
    header = info.header_offset
    start = (
        header
        + 30
        + int.from_bytes(data[header + 26 : header + 28], "little")
        + int.from_bytes(data[header + 28 : header + 30], "little")
    )
    data[start + info.compress_size // 2] ^= 0xFF
    archive.write_bytes(bytes(data))


def test_bad_crc_member_is_skipped_and_listed(tmp_path):
    folder = image_folder(tmp_path / "images", per_class=4)
    archive = tmp_path / "crc.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for path in sorted(folder.rglob("*.png")):
            z.write(path, path.relative_to(folder).as_posix())
    _bad_crc_member(archive, "diatom/001.png")
    data = prepared(archive, name="crc")
    assert len(data) == 11
    skipped = data.skipped
    assert list(skipped["path"]) == ["diatom/001.png"]
    assert skipped["reason"].iloc[0].startswith("damaged archive member: Bad CRC-32")


# -- bounded in memory: measured in a subprocess ----------------------------------------------------------

PEAK_RSS = textwrap.dedent(
    """
    import resource, sys
    from plankdiff.data.prepare import prepare
    data = prepare(sys.argv[1], name="hostile", size=16, workers=1, out_dir=sys.argv[2], show_progress=False)
    print(data.skipped.to_json(orient="records"))
    # VmHWM, not ru_maxrss, for this process: ru_maxrss keeps the pytest process's peak across exec.
    own = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
    """
)
# Python with numpy, pandas and PIL is ~80 MB per process; one 64 MiB read buffer on top stays far below.
RSS_LIMIT_MB = 350


def peak_rss_of_prepare(source: Path, out: Path) -> tuple[list[dict], float]:
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(source), str(out)],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(SRC)},
        timeout=120,
        check=True,
    )
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-2]), int(lines[-1]) / 1024


@pytest.mark.slow
def test_zip_bomb_member_is_refused_in_bounded_memory(tmp_path):
    folder = image_folder(tmp_path / "images", per_class=2)
    archive = zip_of(folder, tmp_path / "bomb.zip")
    with (
        zipfile.ZipFile(archive, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as z,
        z.open("copepod/bomb.png", "w", force_zip64=True) as member,
    ):
        block = b"\x00" * (1 << 20)
        for _ in range(1024):  # 1 GiB unpacked, ~1 MB packed
            member.write(block)
    assert archive.stat().st_size < 8 << 20
    skipped, peak_mb = peak_rss_of_prepare(archive, tmp_path / "out")
    assert [(s["path"], s["reason"]) for s in skipped] == [
        ("copepod/bomb.png", f"archive member larger than {MAX_FILE_BYTES >> 20} MiB unpacked")
    ]
    assert peak_mb < RSS_LIMIT_MB, f"peak RSS {peak_mb:.0f} MB"


@pytest.mark.slow
def test_huge_png_is_refused_in_bounded_memory(tmp_path):
    folder = image_folder(tmp_path / "images", per_class=2)
    Image.new("L", (10_000, 10_000)).save(folder / "copepod" / "huge.png", compress_level=1)
    assert (folder / "copepod" / "huge.png").stat().st_size < 1 << 20
    skipped, peak_mb = peak_rss_of_prepare(folder, tmp_path / "out")
    # PIL's own guard (on in the workers at MAX_PIXELS) refuses it from the header, before decoding.
    assert [s["path"] for s in skipped] == ["copepod/huge.png"]
    assert skipped[0]["reason"].startswith("too many pixels: Image size (100000000 pixels) exceeds limit")
    assert str(2 * MAX_PIXELS) in skipped[0]["reason"]
    assert peak_mb < RSS_LIMIT_MB, f"peak RSS {peak_mb:.0f} MB"


# -- the command line: one line, `error: …`, exit code 1, no traceback ------------------------------


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """`plankdiff …` in-process, with a private cache; returns (exit code, output)."""
    from typer.testing import CliRunner

    from plankdiff.cli import app

    monkeypatch.setenv("PLANKDIFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps at the terminal width otherwise

    def run(*args) -> tuple[int, str]:
        result = CliRunner().invoke(app, [str(a) for a in args])
        return result.exit_code, result.output

    return run


@pytest.fixture
def tiny_unet(tmp_path) -> Path:
    """A diffusers UNet2DModel folder of the tiny preset for 16 px images: `features extract` takes it."""
    from plankdiff.diffusion.config import load_config
    from plankdiff.diffusion.model import build_unet

    folder = tmp_path / "unet"
    build_unet(load_config("tiny"), image_size=16, channels=1).save_pretrained(folder)
    return folder


def _experiment(tmp_path: Path, dataset: PreparedDataset) -> Path:
    """A study on the test dataset whose one fault is a timestep past T."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            name: bad
            experiments: [ndsb]
            datasets:
              ndsb: {{source: {dataset.info["source"]}, size: 16}}
            pretrain:
              ndsb: {{dataset: ndsb, split: long-tailed}}
            diffusion: {{preset: tiny, max_minutes: 0.1}}
            baselines: {{methods: [simclr], max_minutes: 0.1}}
            features: {{timesteps: [5, 1200]}}
            """
        )
    )
    return path


def _two_per_class(tmp_path: Path) -> Path:
    return prepared(image_folder(tmp_path / "two", per_class=2), name="two").root


# (case, arguments given the test's paths, message fragment after `error: `)
CLI_REFUSED = [
    (
        "timestep not a number",
        lambda p: ("features", "extract", p["unet"], p["data"], "--out", p["out"], "--timesteps", "5,x"),
        "Invalid value for --timesteps: '5,x' is not a comma-separated list of integers",
    ),
    (
        "timestep past T",
        lambda p: ("features", "extract", p["unet"], p["data"], "--out", p["out"], "--timesteps", "1200"),
        "Invalid value for --timesteps: '1200': give timesteps in 0–999",
    ),
    (
        "unknown block",
        lambda p: ("features", "extract", p["unet"], p["data"], "--out", p["out"], "--blocks", "nope"),
        "--blocks: unknown block(s) nope; available: ",
    ),
    (
        "negative diffusion budget",
        lambda p: (
            "diffusion",
            "train",
            p["data"],
            "--preset",
            "tiny",
            "--max-minutes",
            "-1",
            "--out",
            p["out"],
        ),
        "Invalid value for '--max-minutes': Input should be greater than or equal to 0",
    ),
    (
        "zero diffusion batch",
        lambda p: (
            "diffusion",
            "train",
            p["data"],
            "--preset",
            "tiny",
            "--batch-size",
            "0",
            "--out",
            p["out"],
        ),
        "Invalid value for '--batch-size': Input should be greater than or equal to 1",
    ),
    (
        "negative baseline budget",
        lambda p: ("baseline", "train", "simclr", p["data"], "--max-minutes", "-1", "--out", p["out"]),
        "Invalid value for '--max-minutes': Input should be greater than or equal to 0",
    ),
    (
        "balanced split on too little data",
        lambda p: ("data", "split", p["data"], "--kind", "balanced"),
        "a balanced split needs 2 classes with 60+ training images, this data has 0 (largest: 7)",
    ),
    (
        "split with empty validation part",
        lambda p: ("data", "split", _two_per_class(p["tmp"])),
        "split 'long-tailed-s0': no val rows (train 6, val 0, test 0); the data is too small for this split",
    ),
    (
        "dry run of a study with a timestep past T",
        lambda p: ("run", _experiment(p["tmp"], p["dataset"]), "--dry-run", "--results", p["out"]),
        "features.timesteps: [1200] outside 0..999",
    ),
    (
        "study override of a misspelt key",
        lambda p: ("run", "gpu", "--set", "diffusion.max_minuts=1", "--dry-run", "--results", p["out"]),
        "gpu.yaml with --set diffusion.max_minuts=1: invalid experiment: diffusion.max_minuts: Extra inputs",
    ),
]


@pytest.mark.parametrize(("case", "args", "message"), CLI_REFUSED, ids=[c[0] for c in CLI_REFUSED])
def test_cli_refuses_with_one_line(cli, dataset, tiny_unet, tmp_path, case, args, message):
    paths = {
        "unet": tiny_unet,
        "data": dataset.root,
        "dataset": dataset,
        "out": tmp_path / "out",
        "tmp": tmp_path,
    }
    code, output = cli(*args(paths))
    # 2: refused while the command line is parsed (click's usage error), 1: refused by the library.
    assert code in (1, 2), f"{case}: exit {code}\n{output}"
    assert "Traceback" not in output
    last = output.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, f"{case}: {output}"
    assert not (tmp_path / "out").exists(), f"{case}: wrote output before refusing"


def test_split_with_few_validation_images_is_written_with_a_warning(cli, dataset):
    code, output = cli("data", "split", dataset.root)
    assert code == 0, output
    text = " ".join(output.split())
    assert (
        "warning: split 'long-tailed-s0': 3 validation images for 3 classes (1.0 per class on average), "
        "too few to select on reliably (wanted: 5+ per class)"
    ) in text
    assert (dataset.root / "splits" / "long-tailed-s0.csv").exists()


def test_selection_warning_names_classes_without_validation_images(dataset):
    split = long_tailed_split(dataset)
    assert split.selection_warning().startswith("split 'long-tailed-s0': 3 validation images")
    copepods = split.rows["val"][split.labels("val") == 0]
    split.rows["val"] = np.setdiff1d(split.rows["val"], copepods)
    assert "; none for 1: copepod)" in split.selection_warning()
    # Enough images per class: no warning; a shifted test set (test rows only): none either.
    many = Split(
        "many",
        {"train": np.arange(3), "val": np.arange(30), "test": np.arange(0)},
        np.arange(30) % 3,
        list(CLASSES),
    )
    assert many.selection_warning() is None
    shifted = Split(
        "shifted",
        {"train": np.arange(0), "val": np.arange(0), "test": np.arange(30)},
        np.arange(30) % 3,
        list(CLASSES),
    )
    assert shifted.selection_warning() is None
    shifted.check_usable()  # and it is usable as a test set


# -- `python -O` does not change behaviour: no user-input check is an assert -------------------------


def test_no_assert_statements_in_the_package():
    import ast

    found = [
        f"{path.relative_to(SRC)}:{node.lineno}"
        for path in sorted(SRC.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assert)
    ]
    assert found == [], f"assert statements vanish under python -O: {found}"


def test_checks_hold_under_python_O(tmp_path):
    code = textwrap.dedent(
        """
        import numpy as np
        from plankdiff.probe.linear import fit_probe_grid
        from plankdiff.features.extract import ExtractionRequest
        for call in (
            lambda: fit_probe_grid({"x": np.zeros((4, 2))}, np.array([0, 1, 0, 1]), train=[0, 1], val=[1, 2], n_classes=2),
            lambda: ExtractionRequest(timesteps=(1200,)),
        ):
            try:
                call()
                print("accepted")
            except ValueError as error:
                print(error)
        """
    )
    done = subprocess.run(
        [sys.executable, "-O", "-c", code],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(SRC)},
        # -O reads .opt-1.pyc files, which a fresh venv lacks: torch is compiled from source on
        # first import (65 s on 2 idle cores), so the limit only guards against a hang.
        timeout=600,
        check=True,
    )
    assert done.stdout.splitlines() == [
        "train and val rows overlap: selection would leak",
        "--timesteps: [1200] outside 0..999 (the DDPM's T = 1000)",
    ]
