"""Baselines on small real NDSB images: every method trains a few steps and its frozen features go
through the feature store (and the probe); resume is bitwise exact; the supervised method reads only
the train rows of its split, the self-supervised ones never read a label; the registry, the views
and the command line."""

from __future__ import annotations

import importlib
import json
import math
import shutil
import signal

import numpy as np
import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from typer.testing import CliRunner

from plankdiff.baselines import METHODS, Method, get_method, register
from plankdiff.baselines.augment import SSL_VIEW, ViewAugment, gaussian_blur, random_resized_crop
from plankdiff.baselines.backbones import ResNet18
from plankdiff.baselines.extract import extract_baseline_features, load_baseline
from plankdiff.baselines.train import BaselineConfig, BaselineTrainer, TrainingRows, training_rows
from plankdiff.cli import app
from plankdiff.data.prepare import PreparedDataset
from plankdiff.data.splits import Split, long_tailed_split
from plankdiff.diffusion.checkpoint import load_checkpoint
from plankdiff.diffusion.train import to_model_range

SPLIT = "long-tailed-s0"
SSL_METHODS = ("byol", "dino", "mae", "simclr")
TINY_WIDTH = {"supervised": 8, "simclr": 8, "byol": 8, "dino": 8, "mae": 24}  # MAE: 3 heads of 8


@pytest.fixture(scope="module")
def dataset(prepared_small_ndsb, tmp_path_factory) -> PreparedDataset:
    """The 48-image, 16 px NDSB subset with a 70/10/20 split (36 train rows)."""
    root = shutil.copytree(prepared_small_ndsb.root, tmp_path_factory.mktemp("baselines") / "ndsb-small")
    prepared = PreparedDataset(root)
    long_tailed_split(prepared, seed=0).save(prepared)
    return prepared


def tiny_config(method: str, **overrides) -> BaselineConfig:
    settings = {
        "width": TINY_WIDTH[method],
        "batch_size": 8,
        "max_steps": 2,
        "log_every": 1,
        "checkpoint_every": 2,
    }
    return BaselineConfig.for_method(method, **settings | overrides)


def make_trainer(
    dataset, method: str, out, *, resume: bool = False, data=None, **overrides
) -> BaselineTrainer:
    data = data or training_rows(dataset, method=method, split=SPLIT)
    return BaselineTrainer(
        config=tiny_config(method, **overrides),
        dataset=dataset,
        data=data,
        out=out,
        resume=resume,
        show_progress=False,
    )


def read_metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- registry --------------------------------------------------------------------------------------


def test_registry_has_the_five_methods_and_rejects_unknown_names():
    assert sorted(METHODS) == ["byol", "dino", "mae", "simclr", "supervised"]
    assert all(issubclass(cls, Method) and cls.name == name for name, cls in METHODS.items())
    with pytest.raises(
        ValueError, match="unknown baseline method 'swav'; choose one of: byol, dino, mae, simclr"
    ):
        get_method("swav")
    with pytest.raises(ValueError, match="unknown baseline method 'swav'"):
        BaselineConfig(method="swav", width=8, lr=1e-3, weight_decay=0.0, max_steps=1)
    with pytest.raises(RuntimeError, match="registered twice"):
        register("simclr")(type("Again", (Method,), {}))


def test_a_run_needs_a_budget_or_a_step_limit():
    with pytest.raises(ValueError, match="max_minutes"):
        BaselineConfig.for_method("simclr")
    assert BaselineConfig.for_method("mae", max_minutes=20).lr == METHODS["mae"].lr


# -- every method: train, then features through the store ------------------------------------------


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_trains_and_its_features_fill_the_store(dataset, name, tmp_path):
    run = tmp_path / "run"
    result = make_trainer(dataset, name, run).train()
    assert (result.step, result.stopped_by, result.images_seen) == (2, "steps", 16)
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["loss"]) for m in metrics), metrics
    info = json.loads((run / "baseline.json").read_text())
    split = Split.load(dataset, SPLIT)
    assert info["method"] == name and info["dataset"]["key"] == dataset.key and info["split"] == SPLIT
    assert info["training_rows"] == len(split.indices("train")) == 36
    assert (info["step"], info["images_seen"], info["stopped_by"]) == (2, 16, "steps")
    assert info["config"]["width"] == TINY_WIDTH[name] and info["image_shape"] == [1, 16, 16]
    assert 0 < info["parameters"]["backbone"] <= info["parameters"]["total"] and info["git_sha"]
    assert info["classes"] == (split.classes if name == "supervised" else None)

    out = tmp_path / "features"
    store = extract_baseline_features(run, dataset, out=out, split=SPLIT, batch_size=16, show_progress=False)
    assert store.complete and len(store.rows) == 48
    method = load_baseline(run)[0]
    blocks = method.feature_blocks()
    assert store.pairs == [b.name for b in blocks] and "pool" in store.pairs
    assert store.info["dataset_key"] == dataset.key and len(store.info["model_hash"]) == 64
    x = to_model_range(torch.from_numpy(np.array(dataset.images[:5])))
    with torch.inference_mode():
        direct = method.backbone_features(x)
    for pair, block in zip(store.pair_table(), blocks, strict=True):
        assert pair["t"] is None and pair["dim"] == block.dim and pair["block"] == block.name
        values = store.load(pair["name"])
        assert values.shape == (48, block.dim) and values.dtype == np.float16
        assert np.isfinite(values).all() and values.std() > 0, pair["name"]
        np.testing.assert_allclose(values[:5], direct[pair["name"]].numpy(), rtol=2e-3, atol=2e-3)
    own_head = out / "own_head.json"
    if name == "supervised":
        scores = json.loads(own_head.read_text())
        assert scores["split"] == SPLIT and scores["test"]["n"] == len(split.indices("test"))
        assert 0 <= scores["val"]["accuracy"] <= 1 and 0 <= scores["test"]["macro_f1"] <= 1
        assert np.load(out / "logits.npy").shape == (48, len(split.classes))
    else:
        assert not own_head.exists()
    # Extracting again reuses the finished store.
    before = {p: store.load(p).copy() for p in store.pairs}
    again = extract_baseline_features(run, dataset, out=out, split=SPLIT, batch_size=7, show_progress=False)
    assert all(np.array_equal(before[p], again.load(p)) for p in store.pairs)


@pytest.mark.parametrize("name", ["supervised", "mae"])  # the objectives with a clear floor on a fixed batch
def test_loss_falls_when_fitting_one_fixed_batch(dataset, name, tmp_path):
    trainer = make_trainer(dataset, name, tmp_path / "run", warmup_steps=0)
    fixed = torch.arange(16)
    losses = [float(trainer.train_step(fixed)) for _ in range(25)]
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses


def test_the_probe_reads_a_baseline_store(dataset, tmp_path):
    from plankdiff.probe.linear import fit_probe_grid

    run = tmp_path / "run"
    make_trainer(dataset, "simclr", run).train()
    store = extract_baseline_features(
        run, dataset, out=tmp_path / "features", split=SPLIT, show_progress=False
    )
    split = Split.load(dataset, SPLIT)
    # Pairs given deepest first, so the first table row is not the winner by construction.
    features, labels = dict(reversed(store.load_many().items())), split.targets[store.rows]
    val = store.positions(split.indices("val"))
    grid = fit_probe_grid(
        features,
        labels,
        train=store.positions(split.indices("train")),
        val=val,
        n_classes=len(split.classes),
        lrs=(1e-2, 1e-3),
        weight_decays=(1e-4, 0.5),
        epochs=2,
        matmul_dtype="float32",
    )
    table = grid.table
    # One row per (block, lr, weight decay): the store's 3 blocks × the 2 × 2 grid, in the given order.
    assert store.pairs == ["layer3@4", "layer4@2", "pool"]
    assert list(dict.fromkeys(table["pair"])) == ["pool", "layer4@2", "layer3@4"]
    assert sorted(zip(table["pair"], table["lr"], table["weight_decay"], strict=True)) == sorted(
        (p, lr, wd) for p in store.pairs for lr in (1e-2, 1e-3) for wd in (1e-4, 0.5)
    )
    assert table["val_macro_f1"].between(0, 1).all() and table["val_accuracy"].between(0, 1).all()
    correct = table["val_accuracy"] * len(val)  # a count of the validation images, one per class
    assert len(val) == 4
    np.testing.assert_allclose(correct, correct.round(), atol=1e-6)
    # The documented rule, applied here by hand: highest val macro-F1, then val accuracy, then the
    # pair name; an exact tie between hyper-parameters of one pair keeps the first in grid order.
    rows = list(table.itertuples())
    winner = min(rows, key=lambda r: (-r.val_macro_f1, -r.val_accuracy, r.pair))
    assert (grid.best_pair, grid.best_hp) == (
        winner.pair,
        {"lr": winner.lr, "weight_decay": winner.weight_decay},
    )
    # The selected probe is the one scored: its predictions reproduce the winner's val accuracy.
    predicted = grid.classifier().predict(np.asarray(features[grid.best_pair][val], np.float32))
    assert (predicted == labels[val]).mean() == pytest.approx(winner.val_accuracy)


def test_an_interrupted_extraction_resumes(dataset, tmp_path):
    run = tmp_path / "run"
    make_trainer(dataset, "supervised", run, max_steps=1).train()
    whole = extract_baseline_features(
        run, dataset, out=tmp_path / "whole", batch_size=16, show_progress=False
    )
    out = tmp_path / "resumed"
    partial = extract_baseline_features(run, dataset, out=out, batch_size=16, show_progress=False)
    partial.mark_done(16)  # as if killed after the first batch
    for array in partial.open_arrays().values():
        array[16:] = 0
        array.flush()
    resumed = extract_baseline_features(run, dataset, out=out, batch_size=16, show_progress=False)
    assert resumed.complete
    for pair in whole.pairs:
        assert np.array_equal(whole.load(pair), resumed.load(pair)), pair


# -- resume ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dino", "mae"])  # momentum teacher and loss centre; MAE's global-RNG masks
def test_resume_gives_bitwise_the_same_weights(dataset, name, tmp_path):
    straight = make_trainer(dataset, name, tmp_path / "straight", max_steps=4).train()
    assert straight.step == 4
    first = make_trainer(dataset, name, tmp_path / "resumed", max_steps=2).train()
    assert (first.step, first.stopped_by) == (2, "steps")
    torch.manual_seed(1234)  # whatever the global RNG holds now must not matter
    second = make_trainer(dataset, name, tmp_path / "resumed", max_steps=4, resume=True).train()
    assert (second.step, second.images_seen) == (4, 32)
    for step in ("step_0000002", "step_0000004"):
        weights_a, _, state_a = load_checkpoint(tmp_path / "straight" / "checkpoints" / step)
        weights_b, _, state_b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / step)
        assert weights_a.keys() == weights_b.keys()
        for key in weights_a:
            assert torch.equal(weights_a[key], weights_b[key]), (step, key)
        assert torch.equal(state_a["generator"], state_b["generator"])
    losses = [m["loss"] for m in read_metrics(tmp_path / "resumed")]
    assert losses == [m["loss"] for m in read_metrics(tmp_path / "straight")]


def test_resume_refuses_another_recipe_and_an_existing_run_needs_resume(dataset, tmp_path):
    run = tmp_path / "run"
    make_trainer(dataset, "simclr", run, max_steps=1).train()
    with pytest.raises(FileExistsError, match="--resume"):
        make_trainer(dataset, "simclr", run, max_steps=2).train()
    with pytest.raises(ValueError, match=r"the recipe differs \(lr: "):
        make_trainer(dataset, "simclr", run, max_steps=2, lr=1e-4, resume=True).train()
    with pytest.raises(ValueError, match="method differs"):
        make_trainer(dataset, "byol", run, max_steps=2, resume=True).train()
    # A longer budget is not a different recipe.
    assert make_trainer(dataset, "simclr", run, max_steps=2, resume=True).train().step == 2


def test_time_budget_stops_the_run_and_decays_the_rate(dataset, tmp_path):
    trainer = make_trainer(dataset, "simclr", tmp_path / "run", max_steps=None, max_minutes=1e-6)
    result = trainer.train()
    assert (result.step, result.stopped_by) == (1, "time")
    assert trainer.progress == 1.0 and trainer.learning_rate() == 0.0
    assert json.loads((tmp_path / "run" / "baseline.json").read_text())["stopped_by"] == "time"


def test_sigterm_ends_the_run_with_a_checkpoint_and_leaves_the_handlers_as_they_were(
    dataset, tmp_path, sigterm_during_step_two
):
    before = signal.getsignal(signal.SIGTERM)
    trainer = make_trainer(dataset, "simclr", tmp_path / "run", max_steps=50, checkpoint_every=100)
    sigterm_during_step_two(trainer)
    result = trainer.train()
    assert (result.step, result.stopped_by) == (2, "interrupt")
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000002")[2]["step"] == 2
    assert signal.getsignal(signal.SIGTERM) == before, "a later stage could not be stopped"


# -- what each method may read ---------------------------------------------------------------------


class RecordingImages:
    """A dataset's image array that records every row read from it."""

    def __init__(self, images: np.ndarray):
        self.images, self.read = images, []

    @property
    def shape(self) -> tuple[int, ...]:
        return self.images.shape

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        self.read.append(np.arange(len(self.images))[index])
        return self.images[index]


def test_supervised_reads_only_its_train_rows(dataset, tmp_path, monkeypatch):
    split = Split.load(dataset, SPLIT)
    recording = RecordingImages(dataset.images)
    monkeypatch.setattr(dataset, "images", recording)
    trainer = make_trainer(dataset, "supervised", tmp_path / "run")
    trainer.train()
    read = np.unique(np.concatenate(recording.read))
    assert np.array_equal(read, np.sort(split.indices("train")))
    assert not np.isin(read, np.concatenate([split.indices("val"), split.indices("test")])).any()
    assert np.array_equal(trainer.labels.numpy(), split.labels("train"))
    with pytest.raises(ValueError, match="give --split"):
        training_rows(dataset, method="supervised", split=None)


class Unlabelled:
    """A prepared dataset whose labels cannot be read: any attempt fails the test."""

    def __init__(self, dataset: PreparedDataset):
        self.images, self.key, self.name, self.root = dataset.images, dataset.key, dataset.name, dataset.root
        # The run records which images it trained on (plankdiff.data.lineage): the source hash and
        # each image's path, never a label column.
        self.info = {"source_hash": dataset.info["source_hash"]}
        self.meta = dataset.meta[["path"]]

    def __len__(self) -> int:
        return len(self.images)

    def __getattr__(self, name: str):
        raise AssertionError(f"a self-supervised method read dataset.{name}")


@pytest.mark.parametrize("name", SSL_METHODS)
def test_self_supervised_methods_never_see_labels(dataset, name, tmp_path, monkeypatch):
    data = training_rows(dataset, method=name, split=SPLIT)
    assert data.labels is None and data.classes is None
    assert np.array_equal(data.rows, Split.load(dataset, SPLIT).indices("train"))
    trainer = make_trainer(Unlabelled(dataset), name, tmp_path / "run", data=data, max_steps=1)
    given = []
    step = trainer.method.training_step

    def spy(pixels, generator, *, labels=None, progress=None):
        given.append(labels)
        return step(pixels, generator, labels=labels, progress=progress)

    monkeypatch.setattr(trainer.method, "training_step", spy)
    trainer.train()
    assert given == [None]
    with pytest.raises(ValueError, match="must not be given labels"):
        make_trainer(
            dataset, name, tmp_path / "other", data=TrainingRows(rows=data.rows, labels=data.rows * 0)
        )


# -- backbones and views ---------------------------------------------------------------------------


def test_resnet18_is_torchvisions_with_a_small_image_stem():
    net = ResNet18(channels=1)
    assert (
        sum(p.numel() for p in net.parameters()) == 11_167_680
    )  # torchvision's 11,689,512 less fc, 3×3 stem
    assert (net.conv1.in_channels, net.conv1.kernel_size, net.conv1.stride) == (1, (3, 3), (1, 1))
    assert isinstance(net.maxpool, torch.nn.Identity)
    for size in (16, 28, 32):
        small = ResNet18(channels=2, width=8).eval()
        with torch.inference_mode():
            features = small.features(torch.zeros(2, 2, size, size))
        assert {b.name: b.dim for b in small.feature_blocks(size)} == {
            k: v.shape[1] for k, v in features.items()
        }
    assert [b.name for b in net.feature_blocks(32)] == ["layer3@8", "layer4@4", "pool"]


def test_mae_blocks_at_32_px():
    method = get_method("mae").build(channels=1, size=32)
    assert [(b.name, b.dim) for b in method.feature_blocks()] == [
        ("block4", 192),
        ("block6", 192),
        ("pool", 192),
    ]
    assert method.sequence_length == 65


def test_views_are_per_image_reproducible_and_in_range():
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 1, 16, 16), dtype=np.uint8))
    batch = pixels.repeat(32, 1, 1, 1)
    first = SSL_VIEW(batch, torch.Generator().manual_seed(0))
    again = SSL_VIEW(batch, torch.Generator().manual_seed(0))
    assert torch.equal(first, again) and first.dtype == torch.float32 and first.shape == batch.shape
    assert first.min() >= -1 and first.max() <= 1
    assert len({tuple(v.flatten().tolist()) for v in first}) > 16  # each image gets its own view
    x = batch.float() / 255
    identity = random_resized_crop(x, torch.Generator(), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(identity, x, atol=1e-5, rtol=0)
    plain = ViewAugment(crop_scale=None, dihedral=False)(batch, torch.Generator())
    torch.testing.assert_close(plain, to_model_range(batch), atol=1e-6, rtol=0)


def test_views_stay_float32_under_the_trainers_bf16_autocast():
    batch = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (16, 1, 16, 16), dtype=np.uint8))
    plain = SSL_VIEW(batch, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as the trainer wraps training_step on GPUs
        cast = SSL_VIEW(batch, torch.Generator().manual_seed(0))
    assert cast.dtype == torch.float32 and torch.equal(cast, plain)


def test_random_draws_do_not_depend_on_which_augmentations_fire():
    x = torch.rand(8, 1, 16, 16)
    states = []
    for p in (0.0, 1.0):
        generator = torch.Generator().manual_seed(0)
        blurred = gaussian_blur(x, generator, p=p, sigma=(0.5, 1.0))
        states.append(generator.get_state())
        if p == 0:
            assert torch.equal(blurred, x)
        else:
            torch.testing.assert_close(blurred.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.05, rtol=0)
            assert blurred.var() < x.var()
    assert torch.equal(*states)


# -- command line ----------------------------------------------------------------------------------


@pytest.fixture
def run_cli(monkeypatch):
    for module in ("plankdiff.baselines.cli", "plankdiff.features.cli"):
        monkeypatch.setattr(importlib.import_module(module), "console", Console(width=400, color_system=None))
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(app, [str(a) for a in args])
        result.text = " ".join(result.output.split())
        return result

    return run


def test_cli_list_train_and_extract(run_cli, dataset, tmp_path):
    listed = run_cli("baseline", "list")
    assert listed.exit_code == 0, listed.output
    assert all(name in listed.text for name in METHODS) and "11.17M" in listed.text

    run = tmp_path / "run"
    common = ("--max-steps", "2", "--batch-size", "8", "--width", "8")
    trained = run_cli(
        "baseline", "train", "supervised", dataset.root, "--out", run, "--split", SPLIT, *common
    )
    assert trained.exit_code == 0, trained.output
    assert "done (steps): step 2" in trained.text and "36 images" in trained.text
    assert load_file(run / "checkpoints" / "step_0000002" / "model.safetensors")

    out = tmp_path / "features"
    extracted = run_cli(
        "features", "extract", run, dataset.root, "--out", out, "--split", SPLIT, "--batch-size", "16"
    )
    assert extracted.exit_code == 0, extracted.output
    assert "3 pairs × 48 images" in extracted.text
    assert (out / "own_head.json").exists()

    unsplit = run_cli("baseline", "train", "supervised", dataset.root, "--out", tmp_path / "x", *common)
    assert unsplit.exit_code == 1 and "give --split" in unsplit.text
    unknown = run_cli("baseline", "train", "swav", dataset.root, "--out", tmp_path / "y", *common)
    assert unknown.exit_code == 1 and "unknown baseline method 'swav'" in unknown.text
