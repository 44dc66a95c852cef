"""scripts/open_set_scores.py: validation-only open-set scores on crafted feature stores, the fixed
PWSSC samples drawn from a small zip laid out like the shared one, and the decision shares of
`plankdiff predict` result folders."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import DDPMScheduler

from helpers import fake_prepared, load_script, write_store
from plankdiff.data.prepare import PreparedDataset
from plankdiff.data.splits import long_tailed_split
from plankdiff.deploy.export import UNCLASSIFIED, UNKNOWN
from plankdiff.deploy.predict import PREDICTION_COLUMNS
from plankdiff.probe.ood import held_out_classes, held_out_rows

PAIRS = ("mid@8/t=5", "dec@16/t=10")
CLASSES = [f"c{i}" for i in range(10)]  # held out by the default rule (every 5th): c0 and c5
PER_CLASS, DIM = 150, 16


@pytest.fixture(scope="module")
def script():
    return load_script("open_set_scores")


# -- validation ---------------------------------------------------------------------------------------


def crafted(root: Path, *, unknown_apart: bool):
    """A dataset of 10 classes × 150 rows, its 40/40/20 split (saved) and a store of two pairs:
    each known class a Gaussian around its own random centre; the held-out classes' rows either
    around their own centres moved 5 times as far out (`unknown_apart`: far from every known image
    in distance and, 16 dimensions being nearly orthogonal, in direction, which the cosine kNN reads)
    or drawn like a known class's rows (a random one each), so no score can tell them apart. Test
    rows are NaN: a score that read one would not be finite."""
    labels = [c for c in CLASSES for _ in range(PER_CLASS)]
    dataset = fake_prepared(root / "dataset", labels)
    split = long_tailed_split(dataset, seed=0, fractions=(0.4, 0.4, 0.2))
    split.save(dataset)
    held = held_out_classes(split.classes)
    assert held == ["c0", "c5"]
    names = np.asarray(split.classes)[dataset.labels]
    is_held = np.isin(names, held)
    rng = np.random.default_rng(0)
    features = {}
    for pair in PAIRS:
        centres = rng.normal(0, 3, (len(CLASSES), DIM))
        known_classes = np.flatnonzero(~np.isin(split.classes, held))
        mimic = rng.choice(known_classes, size=len(labels))  # the known class a held-out row copies
        centre = np.where(is_held[:, None], centres[mimic], centres[dataset.labels])
        if unknown_apart:
            centre = np.where(is_held[:, None], 5 * centres[dataset.labels], centre)
        x = centre + rng.normal(0, 1, (len(labels), DIM))
        x[split.indices("test")] = np.nan
        features[pair] = x
    store = write_store(dataset, root / "store", features)
    return store, split, held


def run_validation(script, store, split, out: Path, *extra: str) -> pd.DataFrame:
    script.main(["validation", str(store.root), "--split", split.name, "--out", str(out), *extra])
    return pd.read_csv(out / "validation_scores.csv")


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def expected_rows() -> set[tuple[str, str]]:
    labels = ["mahalanobis", "relative-mahalanobis", *(f"knn k={k}" for k in (1, 5, 10, 20, 50))]
    return {(pair, label) for pair in (*PAIRS, "all fused") for label in labels}


def test_validation_separates_held_out_classes_far_from_the_known_ones(script, tmp_path, capsys):
    store, split, held = crafted(tmp_path, unknown_apart=True)
    before = files_under(tmp_path)
    table = run_validation(script, store, split, tmp_path / "out", "--per-class", PAIRS[0])
    # Nothing written beside the store or the split (their dataset): only the two tables in --out.
    assert files_under(tmp_path) == before | {"out/validation_scores.csv", "out/per_class.csv"}
    assert set(zip(table["pair"], table["score"], strict=True)) == expected_rows()
    assert len(table) == len(expected_rows())
    assert (table["auroc"] > 0.9).all(), table[["pair", "score", "auroc"]]
    assert (table["unknown_rejected"] > 0.9).all()  # at the cut keeping 95 % of known images
    assert ((table["known_kept"] - 0.95).abs() < 0.02).all()  # the cut is calibrated on them
    # Validation rows only: the known and held-out counts are the split's validation rows, and every
    # number is finite although each test row's features are NaN.
    val_names = np.asarray(split.classes)[split.labels("val")]
    assert (table["n_unknown"] == np.isin(val_names, held).sum()).all()
    assert (table["n_known"] == (~np.isin(val_names, held)).sum()).all()
    assert np.isfinite(table[["auroc", "unknown_rejected", "known_kept", "threshold"]].to_numpy()).all()
    train_names = np.asarray(split.classes)[split.labels("train")]
    header = capsys.readouterr().out.splitlines()[0]
    assert header.endswith(
        f"{(~np.isin(train_names, held)).sum()} train, {(~np.isin(val_names, held)).sum()} known and "
        f"{np.isin(val_names, held).sum()} held-out validation images (2 classes held out)"
    )
    per_class = pd.read_csv(tmp_path / "out" / "per_class.csv")
    assert sorted(per_class["class"]) == held
    assert per_class.set_index("class")["n"].to_dict() == {c: int((val_names == c).sum()) for c in held}
    assert (per_class["auroc"] > 0.9).all()


def test_validation_is_at_chance_when_held_out_classes_look_like_known_ones(script, tmp_path):
    store, split, _ = crafted(tmp_path, unknown_apart=False)
    table = run_validation(script, store, split, tmp_path / "out")
    assert set(zip(table["pair"], table["score"], strict=True)) == expected_rows()
    # 480 known and 120 held-out images: chance AUROC has a standard deviation near 0.03.
    assert ((table["auroc"] - 0.5).abs() < 0.1).all(), table[["pair", "score", "auroc"]]
    assert (table["unknown_rejected"] < 0.2).all()  # about the 5 % of known images the cut rejects
    assert not (tmp_path / "out" / "per_class.csv").exists()  # only with --per-class


def test_validation_refuses_a_per_class_pair_the_store_lacks(script, tmp_path):
    store, split, _ = crafted(tmp_path, unknown_apart=True)
    with pytest.raises(SystemExit) as exit_:
        run_validation(script, store, split, tmp_path / "out", "--per-class", "mid@8/t=7")
    message = str(exit_.value.code)
    assert message.startswith("--per-class mid@8/t=7: not a pair of") and "\n" not in message
    assert all(pair in message for pair in PAIRS)  # the pairs it has, to pick from
    assert not (tmp_path / "out").exists()  # refused before any work


# -- pwssc-sample -------------------------------------------------------------------------------------

# Labels of the shipped NDSB-PWSSC mapping (configs/mappings/ndsb_pwssc.csv) and labels it leaves
# out, with how many images each gets in the small zip.
MAPPED = {"Acartia": 3, "Copepod": 4, "Limacina": 2}
UNMAPPED = {"Blob": 4, "Dot": 3, "Unknown": 2}


@pytest.fixture
def small_pwssc(tmp_path) -> tuple[Path, dict[str, bytes]]:
    """A zip laid out like ../shared/datasets/pwssc.zip: `pwssc/<label>/<file>` and
    `pwssc/manifest.csv`; every file's bytes distinct, by path (relative to `pwssc/`)."""
    rng = np.random.default_rng(0)
    files = {
        f"{label}/SPC-PWSSC-{1460000000 + i}-000{i}.png": rng.bytes(64)
        for label, n in (MAPPED | UNMAPPED).items()
        for i in range(n)
    }
    manifest = io.StringIO()
    manifest.write("path,label,orig_width,orig_height,downscaled\n")
    for path in files:
        manifest.write(f"{path},{path.split('/')[0]},8,8,0\n")
    out = tmp_path / "pwssc.zip"
    with zipfile.ZipFile(out, "w") as archive:
        for path, data in files.items():
            archive.writestr(f"pwssc/{path}", data)
        archive.writestr("pwssc/manifest.csv", manifest.getvalue())
    return out, files


def sample(script, archive: Path, out: Path, *extra: str) -> dict[str, bytes]:
    script.main(["pwssc-sample", "--zip", str(archive), "--out", str(out), *extra])
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_pwssc_sample_splits_unmapped_from_mapped_labels_with_the_zips_bytes(script, small_pwssc, tmp_path):
    archive, files = small_pwssc
    written = sample(script, archive, tmp_path / "a", "--unmatched", "5", "--matched", "4")
    unmatched = [p.split("/", 1)[1] for p in written if p.startswith("unmatched/")]
    matched = [p.split("/", 1)[1] for p in written if p.startswith("matched/")]
    assert len(unmatched) == 5 and len(matched) == 4 and len(written) == 9, sorted(written)
    assert {p.split("/")[0] for p in unmatched} <= set(UNMAPPED)
    assert {p.split("/")[0] for p in matched} <= set(MAPPED)
    for part, paths in (("unmatched", unmatched), ("matched", matched)):
        for path in paths:
            assert written[f"{part}/{path}"] == files[path]
    # The fixed seed: the same call draws the same files; another seed draws others.
    assert sample(script, archive, tmp_path / "b", "--unmatched", "5", "--matched", "4") == written
    other = sample(script, archive, tmp_path / "c", "--unmatched", "5", "--matched", "4", "--seed", "1")
    assert other.keys() != written.keys()


def test_pwssc_sample_of_every_image_takes_each_label_once(script, small_pwssc, tmp_path):
    archive, files = small_pwssc
    written = sample(script, archive, tmp_path / "all", "--unmatched", "9", "--matched", "9")
    expected = {
        f"{'matched' if path.split('/')[0] in MAPPED else 'unmatched'}/{path}": data
        for path, data in files.items()
    }
    assert written == expected


def test_pwssc_sample_refuses_too_large_a_sample_and_a_used_folder(script, small_pwssc, tmp_path):
    archive, _ = small_pwssc
    with pytest.raises(SystemExit) as exit_:
        script.main(
            ["pwssc-sample", "--zip", str(archive), "--out", str(tmp_path / "x"), "--unmatched", "10"]
        )
    assert str(exit_.value.code) == f"--unmatched 10: {archive} has only 9 unmatched images"
    (tmp_path / "used" / "matched").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_:
        script.main(["pwssc-sample", "--zip", str(archive), "--out", str(tmp_path / "used")])
    assert str(exit_.value.code).startswith(f"--out {tmp_path / 'used'}: ")
    assert "exists already" in str(exit_.value.code)


# -- shares -------------------------------------------------------------------------------------------


def predictions(folder: Path, rows: list[tuple[str, str]]) -> Path:
    """A `plankdiff predict --out` folder's predictions.csv with the given (sample, decision) rows."""
    folder.mkdir(parents=True)
    table = pd.DataFrame(
        [{**dict.fromkeys(PREDICTION_COLUMNS, ""), "sample": s, "decision": d} for s, d in rows],
        columns=PREDICTION_COLUMNS,
    )
    table.to_csv(folder / "predictions.csv", index=False)
    return folder


def test_shares_per_sample_and_over_a_folders_samples(script, tmp_path, capsys):
    # Sample "NA" is a sample name, not a missing value.
    two = predictions(
        tmp_path / "two",
        [("s1", UNKNOWN), ("s1", UNKNOWN), ("s1", UNCLASSIFIED), ("s1", "copepod")]
        + [("NA", UNCLASSIFIED), ("NA", "copepod"), ("NA", "diatom")],
    )
    one = predictions(tmp_path / "one", [("only", "diatom"), ("only", UNKNOWN)])
    script.main(["shares", str(two), str(one)])
    lines = capsys.readouterr().out.splitlines()
    title = "unknown / unclassified / a class"
    assert lines == [
        f"{two} s1: n = 4, {title} 50.0 / 25.0 / 25.0 %",
        f"{two} NA: n = 3, {title} 0.0 / 33.3 / 66.7 %",
        f"{two} all: n = 7, {title} 28.6 / 28.6 / 42.9 %",
        f"{one} only: n = 2, {title} 50.0 / 0.0 / 50.0 %",  # one sample: no line over all of them
    ]


def test_shares_refuses_a_folder_without_predictions(script, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        script.main(["shares", str(tmp_path)])
    message = str(exit_.value.code)
    assert message.startswith(f"{tmp_path / 'predictions.csv'}: no such file") and "\n" not in message


def test_sample_draws_a_fixed_share_of_any_archive_with_its_bytes(script, small_pwssc, tmp_path):
    archive, files = small_pwssc

    def draw(out: Path, *extra: str) -> dict[str, bytes]:
        script.main(["sample", "--zip", str(archive), "--out", str(out), *extra])
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    written = draw(tmp_path / "a", "--n", "6")
    assert len(written) == 6 and all(files[path] == data for path, data in written.items())
    assert draw(tmp_path / "b", "--n", "6") == written
    assert draw(tmp_path / "c", "--n", "6", "--seed", "1").keys() != written.keys()
    with pytest.raises(SystemExit, match="exists already"):
        draw(tmp_path / "a", "--n", "6")
    with pytest.raises(SystemExit, match=f"--n {len(files) + 1}: .* has only {len(files)} images"):
        draw(tmp_path / "d", "--n", str(len(files) + 1))


# -- denoising ----------------------------------------------------------------------------------------


class _OracleForBlack(torch.nn.Module):
    """A stand-in denoiser that recovers the noise exactly for an all-black image (x_0 = −1
    everywhere) and is wrong by 2·√ᾱ/√(1−ᾱ) per pixel for an all-white one (x_0 = +1)."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.alphas_cumprod = alphas_cumprod
        self.unused = torch.nn.Parameter(torch.zeros(1))  # gives the script a device to read

    def forward(self, noisy, timesteps):
        alpha_bar = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        return SimpleNamespace(sample=(noisy + alpha_bar.sqrt()) / (1 - alpha_bar).sqrt())


def _prepared_with(root: Path, labels: list[str], value: int):
    fake_prepared(root, labels)
    np.save(root / "images.npy", np.full((len(labels), 1, 8, 8), value, np.uint8))
    return PreparedDataset(root)


def test_denoising_rejects_images_the_denoiser_gets_wrong_and_only_those(script, tmp_path, monkeypatch):
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    monkeypatch.setattr(
        script, "load_backbone", lambda path: (_OracleForBlack(scheduler.alphas_cumprod), scheduler)
    )
    dataset = _prepared_with(tmp_path / "ndsb", [c for c in CLASSES for _ in range(30)], 0)
    split = long_tailed_split(dataset, seed=0, fractions=(0.4, 0.4, 0.2))
    split.save(dataset)
    _prepared_with(tmp_path / "other", ["x"] * 50, 255)
    out = tmp_path / "out"
    script.main(
        ["denoising", "unet", "--dataset", str(dataset.root), "--split", split.name,
         "--other", str(tmp_path / "other"), "--other-n", "20", "--timesteps", "5", "50",
         "--out", str(out)]
    )  # fmt: skip
    table = pd.read_csv(out / "denoising_scores.csv").set_index(["unknown", "score"])
    other, held = table.loc["other"], table.loc["held-out ndsb classes"]
    assert list(other.index) == ["t=5", "t=50", "sum over t"]
    n_held = len(held_out_rows(split, held_out_classes(split.classes), "val"))
    assert (other["n_unknown"] == 20).all() and (held["n_unknown"] == n_held).all()
    assert (other["n_known"] == len(split.rows["val"]) - n_held).all()
    # White images: wrong at every t, so all rejected; the held-out classes' black images are
    # denoised as exactly as the known ones (their errors are float rounding only).
    assert (other["auroc"] == 1.0).all() and (other["unknown_rejected"] == 1.0).all()
    for t in ("t=5", "t=50"):
        assert max(held.loc[t, "median_unknown"], other.loc[t, "median_known"]) < 1e-6
        assert other.loc[t, "median_unknown"] > 1.0


def test_denoising_refuses_a_larger_sample_than_the_other_dataset(script, tmp_path, monkeypatch):
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    monkeypatch.setattr(
        script, "load_backbone", lambda path: (_OracleForBlack(scheduler.alphas_cumprod), scheduler)
    )
    dataset = _prepared_with(tmp_path / "ndsb", [c for c in CLASSES for _ in range(30)], 0)
    split = long_tailed_split(dataset, seed=0, fractions=(0.4, 0.4, 0.2))
    split.save(dataset)
    _prepared_with(tmp_path / "other", ["x"] * 5, 255)
    with pytest.raises(SystemExit, match="--other-n 20: .* has only 5 images"):
        script.main(
            ["denoising", "unet", "--dataset", str(dataset.root), "--split", split.name,
             "--other", str(tmp_path / "other"), "--other-n", "20", "--out", str(tmp_path / "out")]
        )  # fmt: skip
