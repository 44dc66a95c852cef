"""The `plankdiff` command end to end on small real data: data prepare / info / split, diffusion
train / sample."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pandas as pd
import pytest
import typer
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from plankdiff import __version__
from plankdiff.choices import NOISE_CEILING
from plankdiff.cli import app
from plankdiff.data.prepare import PreparedDataset


@pytest.fixture
def run_cli(tmp_path, monkeypatch):
    """Invoke `plankdiff …` with a private cache and consoles wide enough not to wrap messages."""
    monkeypatch.setenv("PLANKDIFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "400")  # typer's usage-error panels and help, unwrapped
    for module in (
        "plankdiff.data.cli",
        "plankdiff.diffusion.cli",
        "plankdiff.features.cli",
        "plankdiff.probe.cli",
        "plankdiff.deploy.cli",
        "plankdiff.baselines.cli",
    ):
        monkeypatch.setattr(importlib.import_module(module), "console", Console(width=400, color_system=None))
    runner = CliRunner()

    def run(*args: str | Path):
        result = runner.invoke(app, [str(a) for a in args])
        result.text = " ".join(result.output.split())  # whitespace-normalised
        return result

    return run


def test_help_lists_the_stages(run_cli):
    result = run_cli("--help")
    assert result.exit_code == 0
    assert "data" in result.output and "diffusion" in result.output


def test_data_prepare_then_info_by_name(run_cli, small_ndsb_zip, tmp_path):
    result = run_cli(
        "data", "prepare", small_ndsb_zip, "--name", "cli-ndsb", "--size", "16", "--workers", "2"
    )
    assert result.exit_code == 0, result.output
    root = tmp_path / "cache" / "prepared" / "cli-ndsb"
    assert f"prepared cli-ndsb: 48 images, 4 classes → {root}" in result.text
    assert "skipped" not in result.text
    assert PreparedDataset(root).images.shape == (48, 1, 16, 16)

    info = run_cli("data", "info", "cli-ndsb", "--per-class", "3")
    assert info.exit_code == 0, info.output
    assert "cli-ndsb: 48 images, 4 classes" in info.text
    assert "(48, 1, 16, 16) uint8" in info.text
    assert (root / "contact_sheet.png").exists()


def test_data_prepare_reports_skipped_files_and_empty_classes(run_cli, small_ndsb_zip, tmp_path):
    folder = tmp_path / "messy"
    with zipfile.ZipFile(small_ndsb_zip) as archive:
        for member in [n for n in archive.namelist() if n.endswith(".jpg")][:3]:
            (folder / "copepod").mkdir(parents=True, exist_ok=True)
            (folder / "copepod" / PurePosixPath(member).name).write_bytes(archive.read(member))
    (folder / "copepod" / "zero.png").write_bytes(b"")
    (folder / "ostracod").mkdir()
    result = run_cli("data", "prepare", folder, "--name", "messy", "--size", "16", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "prepared messy: 3 images, 1 classes" in result.text
    assert "skipped 1 file(s)" in result.text
    assert f"{folder}::copepod/zero.png: zero-byte file" in result.text
    assert "empty class folders: ostracod" in result.text


def test_data_prepare_of_only_bad_files_fails_with_the_reason(run_cli, tmp_path):
    folder = tmp_path / "bad"
    (folder / "copepod").mkdir(parents=True)
    (folder / "copepod" / "a.jpg").write_text("not a picture")
    Image.new("L", (1, 1)).save(folder / "copepod" / "b.png")
    result = run_cli("data", "prepare", folder, "--name", "bad", "--workers", "1")
    assert result.exit_code == 1
    assert "error:" in result.text
    assert "none of 2 images could be used (first problem: copepod/a.jpg: not an image" in result.text
    assert not (tmp_path / "cache" / "prepared" / "bad" / "prepare.json").exists()


def test_data_prepare_of_a_missing_source_fails(run_cli, tmp_path):
    result = run_cli("data", "prepare", tmp_path / "nowhere.zip", "--name", "x")
    assert result.exit_code == 1
    assert "nowhere.zip: no such file or folder" in result.text


def test_data_prepare_background_option(run_cli, small_ndsb_zip, tmp_path):
    clash = run_cli(
        "data", "prepare", small_ndsb_zip, "--name", "x", "--background", "normalise", "--no-polarity"
    )
    assert clash.exit_code == 1
    assert "error: background normalisation needs polarity normalisation" in clash.text
    assert "Traceback" not in clash.output
    plain = run_cli(
        "data", "prepare", small_ndsb_zip, "--name", "plain", "--size", "16", "--background", "none"
    )
    assert plain.exit_code == 0, plain.output
    record = PreparedDataset(tmp_path / "cache" / "prepared" / "plain").info["preprocess"]
    assert "background" not in record  # the record an older preparation would have written


def test_data_prepare_noise_ceiling_option(run_cli, small_ndsb_zip, tmp_path):
    zero = run_cli("data", "prepare", tmp_path, "--name", "x", "--noise-ceiling", "0")
    assert zero.exit_code == 1
    assert zero.output.strip() == "error: --noise-ceiling 0: must be above 0 grey levels (none: no ceiling)"
    word = run_cli("data", "prepare", tmp_path, "--name", "x", "--noise-ceiling", "high")
    assert word.exit_code == 2 and "neither a number of grey levels nor 'none'" in word.text
    for value, name in (("none", "uncapped"), (None, "default")):
        option = ("--noise-ceiling", value) if value else ()
        result = run_cli(
            "data", "prepare", small_ndsb_zip, "--name", name, "--size", "16", "--workers", "1", *option
        )
        assert result.exit_code == 0, result.output
    record = PreparedDataset(tmp_path / "cache" / "prepared" / "uncapped").info["preprocess"]
    assert "noise_ceiling" not in record  # the record an older preparation would have written
    assert PreparedDataset(tmp_path / "cache" / "prepared" / "default").params.noise_ceiling == NOISE_CEILING


def test_data_info_json_and_contact_sheet(run_cli, ndsb_copy, tmp_path):
    sheet = tmp_path / "sheet.png"
    result = run_cli("data", "info", ndsb_copy.root, "--json", "--sheet", sheet, "--per-class", "4")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["images"] == 48 and summary["classes"] == 4 and summary["skipped"] == 0
    assert summary["per_class"] == dict.fromkeys(ndsb_copy.classes, 12)
    assert summary["class_size"] == {"min": 12, "median": 12.0, "max": 12}
    assert summary["array"] == "(48, 1, 16, 16) uint8"
    assert summary["inverted_fraction"] == 1.0
    assert summary["capture_time"]["known"] == 0 and summary["capture_time"]["unknown"] == 48
    assert summary["contact_sheet"] == str(sheet)
    with Image.open(sheet) as picture:
        # 260 px of class names, then 4 cells of 48 + 2 px; one 50 px row per class.
        assert picture.size == (260 + 4 * 50, 4 * 50)
        assert picture.mode == "RGB"


def test_data_info_of_a_folder_that_is_not_prepared(run_cli, tmp_path):
    result = run_cli("data", "info", tmp_path)
    assert result.exit_code == 1
    assert "not a prepared dataset" in result.text


def test_data_split_long_tailed_writes_the_csv(run_cli, ndsb_copy):
    result = run_cli("data", "split", ndsb_copy.root, "--kind", "long-tailed", "--seed", "1")
    assert result.exit_code == 0, result.output
    path = ndsb_copy.root / "splits" / "long-tailed-s1.csv"
    assert "long-tailed-s1" in result.text and str(path) in result.text
    frame = pd.read_csv(path)
    assert len(frame) == 48
    assert frame["split"].value_counts().to_dict() == {"train": 36, "test": 8, "val": 4}
    assert sorted(frame["target"].unique()) == ndsb_copy.classes


def test_data_split_takes_the_experiment_files_shares(run_cli, ndsb_copy):
    from plankdiff.data.shares import SplitOptions
    from plankdiff.data.splits import long_tailed_split

    result = run_cli("data", "split", ndsb_copy.root, "--val-fraction", "0.25", "--test-fraction", "0.25")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(ndsb_copy.root / "splits" / "long-tailed-v25t25-s0.csv")
    assert frame["split"].value_counts().to_dict() == {"train": 24, "test": 12, "val": 12}
    # The partition a study with `splits: {val_fraction: 0.25, test_fraction: 0.25}` draws.
    shares = SplitOptions(val_fraction=0.25, test_fraction=0.25)
    study = long_tailed_split(ndsb_copy, seed=0, fractions=shares.fractions).to_frame()
    pd.testing.assert_frame_equal(frame, study)

    balanced = run_cli("data", "split", ndsb_copy.root, "--kind", "balanced", "--balanced-min-train", "5")
    assert balanced.exit_code == 0, balanced.output
    assert (ndsb_copy.root / "splits" / "balanced-m5c100-s0.csv").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--val-fraction", "0"), "error: --val-fraction 0.0: Input should be greater than 0"),
        (
            ("--val-fraction", "0.5", "--test-fraction", "0.5"),
            "val_fraction 0.5 + test_fraction 0.5 leave no training images",
        ),
    ],
)
def test_data_split_refuses_shares_that_leave_nothing_in_one_line(run_cli, ndsb_copy, options, message):
    result = run_cli("data", "split", ndsb_copy.root, *options)
    assert result.exit_code == 1
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (ndsb_copy.root / "splits").exists()


def test_data_split_cross_domain_keeps_the_parts_of_the_long_tailed_split(run_cli, ndsb_copy, tmp_path):
    """The source rows keep the part they have in the long-tailed split of the same seed and shares."""
    target = shutil.copytree(ndsb_copy.root, tmp_path / "target")
    mapping = tmp_path / "mapping.csv"
    pd.DataFrame(
        [{"dataset": d, "label": c, "group": c} for d in ("ndsb", "pwssc") for c in ndsb_copy.classes]
    ).to_csv(mapping, index=False)
    result = run_cli(
        "data", "split", ndsb_copy.root, "--kind", "cross-domain", "--target", target, "--mapping", mapping
    )
    assert result.exit_code == 0, result.output
    assert run_cli("data", "split", ndsb_copy.root).exit_code == 0
    saved = sorted(p.name for p in (ndsb_copy.root / "splits").glob("*.csv"))
    source = pd.read_csv(
        ndsb_copy.root / "splits" / next(n for n in saved if not n.startswith("long-tailed"))
    )
    base = pd.read_csv(ndsb_copy.root / "splits" / "long-tailed-s0.csv").set_index("row")["split"]
    assert (source.set_index("row")["split"] == base[source["row"]]).all()
    assert list((target / "splits").glob("*.csv"))


def test_data_split_unknown_kind(run_cli, ndsb_copy):
    result = run_cli("data", "split", ndsb_copy.root, "--kind", "random")
    assert result.exit_code == 2
    assert "'random' is not one of 'long-tailed', 'balanced', 'temporal', 'cross-domain'" in result.text
    assert not (ndsb_copy.root / "splits").exists()


def test_diffusion_train_and_sample(run_cli, ndsb_copy, tmp_path):
    assert run_cli("data", "split", ndsb_copy.root).exit_code == 0
    run = tmp_path / "run"
    args = ("diffusion", "train", ndsb_copy.root, "--preset", "tiny", "--out", run, "--max-steps", "2")
    result = run_cli(*args, "--split", "long-tailed-s0")
    assert result.exit_code == 0, result.output
    assert re.search(rf"tiny: \d+\.\d\dM parameters, 36 images → {re.escape(str(run))}", result.text)
    assert re.search(r"device: cpu \(\d+ threads\)", result.text)
    assert "done (steps): step 2" in result.text
    assert (run / "checkpoints" / "latest").read_text() == "step_0000002"
    assert json.loads((run / "config.json").read_text())["training_rows"] == 36  # train rows only

    again = run_cli(*args, "--split", "long-tailed-s0")
    assert again.exit_code == 1
    assert "holds a run already; pass --resume" in again.text

    resumed = run_cli(*args[:-1], "4", "--split", "long-tailed-s0", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "done (steps): step 4" in resumed.text

    sample = run_cli("diffusion", "sample", run, "--n", "4", "--steps", "2")
    assert sample.exit_code == 0, sample.output
    assert "4 samples (2 DDIM steps)" in sample.text
    with Image.open(run / "samples" / "final.png") as grid:
        assert grid.size == (2 * 2 * 17, 2 * 2 * 17)  # 2×2 grid of 16 px + 1 px gaps, doubled


def test_diffusion_sample_to_a_chosen_file(run_cli, tiny_run, tmp_path):
    out = tmp_path / "grid.png"
    result = run_cli("diffusion", "sample", tiny_run, "--n", "4", "--steps", "2", "--out", out)
    assert result.exit_code == 0, result.output
    with Image.open(out) as grid:
        assert grid.size == (68, 68)
        assert grid.mode == "L"
    assert not (tiny_run / "samples").exists()


HEAVY = ("torch", "diffusers", "lightly", "sklearn", "matplotlib")


def test_importing_the_cli_loads_no_heavy_library():
    """`plankdiff --help` is instant because the verbs import the library inside the commands."""
    code = f"import sys, plankdiff.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_version(run_cli):
    result = run_cli("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"plankdiff {__version__}"


# every choice option, each with a typo: refused by the command line (exit 2) before anything runs
TYPOS = [
    (("data", "prepare", "src", "--name", "n", "--mode", "fitt"), "--mode"),
    (("data", "split", "ds", "--kind", "longtailed"), "--kind"),
    (("diffusion", "train", "ds", "--out", "o", "--preset", "tinny"), "--preset"),
    (("features", "extract", "run", "ds", "--out", "o", "--pooling", "max"), "--pooling"),
    (("features", "extract", "run", "ds", "--out", "o", "--precision", "fp16"), "--precision"),
    (("features", "extract", "run", "ds", "--out", "o", "--device", "tpu"), "--device"),
    (("features", "search", "run", "ds", "--split", "s", "--out", "o", "--precision", "bf32"), "--precision"),
    (("probe", "store", "--split", "s", "--protocol", "svm"), "--protocol"),
    (("probe", "store", "--split", "s", "--loss", "focal"), "--loss"),
    (
        ("export", "--backbone", "b", "--features", "f", "--split", "s", "--pair", "p", "--out", "o")
        + ("--loss", "focal"),
        "--loss",
    ),
    (("predict", "model", "in", "--out", "o", "--sample-by", "week"), "--sample-by"),
    (("predict", "model", "in", "--out", "o", "--device", "tpu"), "--device"),
    (("predict", "model", "in", "--out", "o", "--device", "cuda:x"), "--device"),
    (("features", "extract", "run", "ds", "--out", "o", "--device", "cuda1"), "--device"),
]


@pytest.mark.parametrize(("args", "option"), TYPOS, ids=[f"{a[0]}-{o}" for a, o in TYPOS])
def test_a_typo_in_a_choice_is_refused(run_cli, args, option):
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.text
    assert "Traceback" not in result.output


@pytest.mark.parametrize("verb", [("features", "extract", "run", "ds"), ("predict", "model", "in")])
def test_a_gpu_index_without_cuda_is_one_line(run_cli, monkeypatch, verb):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = run_cli(*verb, "--out", "o", "--device", "cuda:0")
    assert result.exit_code == 1, result.output
    assert result.output.strip() == "error: --device cuda:0: no CUDA device is visible to torch"


def test_a_gpu_index_is_checked_against_the_visible_gpus(monkeypatch):
    import torch

    from plankdiff.cli_support import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    console = Console(record=True, width=400)
    assert resolve_device(console, "cuda:1") == "cuda:1"
    assert resolve_device(console, "cuda") == "cuda"
    with pytest.raises(typer.Exit):
        resolve_device(console, "cuda:2")
    assert (
        console.export_text().strip()
        == "error: --device cuda:2: no such GPU; torch sees 2 (cuda:0 to cuda:1)"
    )


def test_switches_take_no_value(run_cli):
    result = run_cli("probe", "store", "--split", "s", "--with-size", "true")
    assert result.exit_code == 2
    assert "unexpected extra argument" in result.text
    help_text = run_cli("predict", "--help").text
    assert "--score" in help_text and not re.search(r"--score\s*<bool>", help_text)


def _commands(group, prefix=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_option_shows_its_default_and_every_verb_an_example():
    verbs = list(_commands(typer.main.get_command(app)))
    assert len(verbs) >= 17
    for path, command in verbs:
        assert "Example: plankdiff " + " ".join(path) in (command.help or ""), path
        for param in command.params:
            if param.param_type_name != "option" or param.name == "help" or param.required:
                continue
            assert param.help, (path, param.name)
            shown = param.show_default is not False and param.default not in (None, "", [])
            said = "default" in param.help or "(0:" in param.help
            assert shown or said or param.is_flag, (path, param.name, param.default)


def test_help_shows_defaults_and_units(run_cli):
    text = run_cli("diffusion", "train", "--help").text
    assert "[default: cpu]" in text and "budget in minutes" in text
    text = run_cli("features", "extract", "--help").text
    assert "0–999" in text and "[default: 1,5,10,25,50,100,200,400,700]" in text
    assert "pixels" in run_cli("data", "prepare", "--help").text
    assert "a fraction" in run_cli("export", "--help").text


def test_cli_defaults_kept_here_agree_with_the_library():
    from plankdiff.deploy import calibrate
    from plankdiff.deploy import cli as deploy_cli
    from plankdiff.features import cli as features_cli
    from plankdiff.features import extract
    from plankdiff.probe import ood

    assert ",".join(map(str, extract.DEFAULT_TIMESTEPS)) == features_cli.DEFAULT_TIMESTEPS
    assert deploy_cli.DEFAULT_TARGET_PRECISION == calibrate.DEFAULT_TARGET_PRECISION
    assert deploy_cli.DEFAULT_OOD_KEEP == ood.DEFAULT_KEEP


def test_a_split_without_its_seed_or_unknown_lists_the_splits(run_cli, ndsb_copy, tmp_path):
    assert run_cli("data", "split", ndsb_copy.root, "--seed", "3").exit_code == 0
    args = ("diffusion", "train", ndsb_copy.root, "--preset", "tiny", "--out", tmp_path / "r")
    result = run_cli(*args, "--split", "long-tailed")
    assert result.exit_code == 1
    assert (
        f"error: --split 'long-tailed': no such split on {ndsb_copy.name}; did you mean long-tailed-s3? "
        "existing splits: long-tailed-s3" in result.text
    )
    assert not (tmp_path / "r").exists()  # refused before the run folder is made
    unknown = run_cli(*args, "--split", "seasonal")
    assert unknown.exit_code == 1
    assert "no such split" in unknown.text and "existing splits: long-tailed-s3" in unknown.text
    assert "did you mean" not in unknown.text
    assert "Traceback" not in unknown.output


def test_extract_timesteps_outside_the_schedule_are_refused(run_cli, tmp_path):
    result = run_cli("features", "extract", tmp_path, "ds", "--out", tmp_path / "o", "--timesteps", "5,1000")
    assert result.exit_code == 2
    assert "give timesteps in 0–999" in result.text


def test_run_help_names_every_shipped_experiment():
    """The `run` argument's help lists the shipped experiments (the ddpm-* family as a pattern): a new
    experiment file that the help does not name is caught here."""
    import fnmatch
    import inspect

    from plankdiff.study.cli import run_command
    from plankdiff.study.config import SHIPPED

    help_text = inspect.signature(run_command).parameters["experiment"].default.help
    listed = re.findall(r"[\w*-]+", help_text.split("(", 1)[1].split(":", 1)[0])
    unnamed = [name for name in SHIPPED if not any(fnmatch.fnmatch(name, pattern) for pattern in listed)]
    assert not unnamed, f"plankdiff run --help does not name {unnamed}"
