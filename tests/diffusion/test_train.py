"""The DDPM trainer on the `tiny` preset: it learns, resumes exactly, stops on NaN and on time;
configurations are validated."""

from __future__ import annotations

import importlib
import json
import math
import shutil
import signal
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import kill_9_at_a_random_point
from plankdiff.diffusion.checkpoint import latest_checkpoint, load_checkpoint
from plankdiff.diffusion.config import PRESETS, LowNoiseTimesteps, UniformTimesteps, load_config
from plankdiff.diffusion.model import build_unet, count_parameters, load_backbone
from plankdiff.diffusion.train import (
    DiffusionTrainer,
    dihedral_augment,
    draw_timesteps,
    to_model_range,
    training_step_flops,
)
from plankdiff.training import TrainingDiverged, TrainResult

# `plankdiff.diffusion` re-exports names that could hide submodules: fetch the module itself.
train_module = importlib.import_module("plankdiff.diffusion.train")


def read_metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


# -- learning --------------------------------------------------------------------------------------


def test_loss_falls_when_fitting_one_fixed_batch(prepared_small_ndsb, make_trainer, tmp_path):
    trainer = make_trainer(prepared_small_ndsb, tmp_path / "fit", augment=False)
    assert trainer.config.train.augment is False
    fixed = torch.arange(8)
    losses = [float(trainer.train_step(fixed)) for _ in range(30)]
    assert all(math.isfinite(loss) for loss in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert 0.5 < first < 2.0  # an untrained ε-predictor: about the noise variance, 1
    assert last < 0.4 * first, losses


def test_tiny_run_layout_and_metrics(tiny_run):
    assert sorted(p.name for p in (tiny_run / "checkpoints").iterdir()) == [
        "latest",
        "step_0000003",
        "step_0000006",
    ]
    assert (tiny_run / "checkpoints" / "latest").read_text() == "step_0000006"
    assert (tiny_run / "ema" / "config.json").exists()
    assert (tiny_run / "ema" / "diffusion_pytorch_model.safetensors").exists()
    assert (tiny_run / "scheduler" / "scheduler_config.json").exists()
    metrics = read_metrics(tiny_run)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert metrics[-1]["images_seen"] == 6 * 8
    assert all(math.isfinite(m["loss"]) for m in metrics)
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["diffusion"]["preset"] == "tiny"
    assert config["image_shape"] == [1, 16, 16]
    assert config["training_rows"] == 48


# -- resume ----------------------------------------------------------------------------------------


def test_resume_gives_bitwise_the_same_run(prepared_small_ndsb, make_trainer, tiny_run, tmp_path):
    """tiny_run trained 6 steps in one go; here 3 steps, a fresh process-like restart, 3 more."""
    out = tmp_path / "resumed"
    first = make_trainer(prepared_small_ndsb, out, max_steps=3).train()
    assert (first.step, first.stopped_by) == (3, "steps")
    assert latest_checkpoint(out / "checkpoints").name == "step_0000003"
    torch.manual_seed(1234)  # whatever the global RNG holds now must not matter
    second = make_trainer(prepared_small_ndsb, out, max_steps=6, resume=True).train()
    assert (second.step, second.images_seen) == (6, 48)

    for step in ("step_0000003", "step_0000006"):
        model_a, ema_a, state_a = load_checkpoint(tiny_run / "checkpoints" / step)
        model_b, ema_b, state_b = load_checkpoint(out / "checkpoints" / step)
        assert_same_weights(model_a, model_b)
        assert_same_weights(ema_a, ema_b)
        assert state_a["ema_optimization_step"] == state_b["ema_optimization_step"] == int(step[-1])
        assert torch.equal(state_a["generator"], state_b["generator"])
    assert_same_weights(
        load_file(tiny_run / "ema" / "diffusion_pytorch_model.safetensors"),
        load_file(out / "ema" / "diffusion_pytorch_model.safetensors"),
    )
    # The log continues where it stopped, with the same losses.
    assert [m["loss"] for m in read_metrics(out)] == [m["loss"] for m in read_metrics(tiny_run)]


def test_resume_refuses_a_different_network(prepared_small_ndsb, tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    config = load_config("tiny").model_copy(
        update={"unet": load_config("tiny").unet.model_copy(update={"layers_per_block": 2})}
    )
    trainer = DiffusionTrainer(
        config=config, dataset=prepared_small_ndsb, out=run, resume=True, show_progress=False
    )
    with pytest.raises(ValueError, match=r"settings differ \(unet.layers_per_block: 1 → 2\)"):
        trainer.train()


def test_resume_refuses_other_training_settings_but_not_a_longer_run(
    prepared_small_ndsb, make_trainer, tiny_run, tmp_path
):
    """A changed learning rate would make one run half of one recipe and half of another."""
    run = shutil.copytree(tiny_run, tmp_path / "run")
    with pytest.raises(ValueError, match=r"settings differ \(train.lr: 0.001 → 0.002\)"):
        make_trainer(prepared_small_ndsb, run, resume=True, lr=2e-3).train()
    resumed = make_trainer(prepared_small_ndsb, run, resume=True, max_steps=7, log_every=2)
    assert resumed.train().step == 7  # how long a run goes and how it reports may change


def test_existing_run_without_resume_is_refused(prepared_small_ndsb, make_trainer, tiny_run):
    before = (tiny_run / "metrics.jsonl").read_text()
    with pytest.raises(FileExistsError, match="--resume"):
        make_trainer(prepared_small_ndsb, tiny_run).train()
    assert (tiny_run / "metrics.jsonl").read_text() == before
    assert (tiny_run / "checkpoints" / "latest").read_text() == "step_0000006"


# -- stopping --------------------------------------------------------------------------------------


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(
    prepared_small_ndsb, make_trainer, tmp_path, monkeypatch
):
    real_mse = train_module.F.mse_loss
    calls = []

    def mse_turning_nan(predicted, target):
        calls.append(1)
        loss = real_mse(predicted, target)
        return loss * float("nan") if len(calls) >= 4 else loss

    monkeypatch.setattr(train_module.F, "mse_loss", mse_turning_nan)
    out = tmp_path / "nan"
    trainer = make_trainer(prepared_small_ndsb, out)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 4.*--resume"):
        trainer.train()
    assert len(calls) == 4
    newest = latest_checkpoint(out / "checkpoints")
    assert newest is not None and newest.name == "step_0000003"
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_0000003"]
    model, ema, state = load_checkpoint(newest)
    assert state["step"] == 3
    assert all(torch.isfinite(t).all() for t in [*model.values(), *ema.values()])

    monkeypatch.setattr(train_module.F, "mse_loss", real_mse)  # "lower the learning rate and --resume"
    result = make_trainer(prepared_small_ndsb, out, resume=True).train()
    assert (result.step, result.stopped_by) == (6, "steps")


def test_sigterm_ends_the_run_with_a_checkpoint_and_leaves_the_handlers_as_they_were(
    prepared_small_ndsb, make_trainer, tmp_path, sigterm_during_step_two
):
    before = signal.getsignal(signal.SIGTERM)
    trainer = make_trainer(prepared_small_ndsb, tmp_path / "run", max_steps=1000)
    sigterm_during_step_two(trainer)
    result = trainer.train()
    assert (result.step, result.stopped_by) == (2, "interrupt")
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step_0000002"
    assert signal.getsignal(signal.SIGTERM) == before, "a later stage could not be stopped"


def test_time_budget_stops_with_a_checkpoint(prepared_small_ndsb, make_trainer, tmp_path):
    out = tmp_path / "timed"
    result = make_trainer(prepared_small_ndsb, out, max_minutes=0.0001, max_steps=1000).train()
    assert result.stopped_by == "time"
    assert 1 <= result.step < 5
    assert result.elapsed_minutes >= 0.0001
    # Stopped between checkpoints: the final state is saved all the same.
    assert latest_checkpoint(out / "checkpoints").name == f"step_{result.step:07d}"
    assert (out / "ema" / "config.json").exists()


def test_training_on_selected_rows_only(prepared_small_ndsb, make_trainer, tmp_path):
    rows = np.array([5, 1, 40])
    trainer = DiffusionTrainer(
        config=load_config("tiny"),
        dataset=prepared_small_ndsb,
        out=tmp_path / "rows",
        rows=rows,
        show_progress=False,
    )
    assert torch.equal(trainer.images, torch.from_numpy(np.asarray(prepared_small_ndsb.images[[1, 5, 40]])))
    with pytest.raises(ValueError, match="no images selected"):
        DiffusionTrainer(
            config=load_config("tiny"), dataset=prepared_small_ndsb, out=tmp_path / "none", rows=[]
        )


# -- pieces of the step ----------------------------------------------------------------------------


def test_model_range_and_augmentation():
    pixels = torch.tensor([[[[0, 255], [128, 64]]]], dtype=torch.uint8)
    x = to_model_range(pixels)
    assert torch.allclose(x, torch.tensor([[[[-1.0, 1.0], [128 / 127.5 - 1, 64 / 127.5 - 1]]]]), atol=1e-6)
    batch = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4)
    augmented = dihedral_augment(batch, torch.Generator().manual_seed(0))
    dihedral = [torch.rot90(v, k, dims=(-2, -1)) for v in (batch, batch.flip(-1)) for k in range(4)]
    for i in range(2):  # each image is one of its own 8 flips / rotations
        assert any(torch.equal(augmented[i], view[i]) for view in dihedral)


# -- configuration ---------------------------------------------------------------------------------


def test_presets_load():
    for preset in PRESETS:
        config = load_config(preset)
        assert config.preset == preset
    tiny = load_config("tiny")
    assert tiny.unet.block_out_channels == (16, 32)
    assert (tiny.train.max_steps, tiny.train.checkpoint_every, tiny.train.batch_size) == (6, 3, 8)
    assert load_config("paper").train.precision == "bf16"


def test_train_overrides():
    config = load_config("tiny", max_steps=3, augment=False, seed=None)
    assert (config.train.max_steps, config.train.augment, config.train.seed) == (3, False, 0)
    assert config.train.lr == 1.0e-3  # the rest of the preset stays
    with pytest.raises(ValueError, match=r"^--max-steps 0: Input should be greater than or equal to 1$"):
        load_config("tiny", max_steps=0)


def test_cpu_preset_is_the_documented_size():
    unet = build_unet(load_config("cpu"), image_size=32, channels=1)
    assert 3.5e6 < count_parameters(unet) < 3.9e6  # "3.7M parameters" (configs/diffusion/cpu.yaml)
    assert [type(b).__name__ for b in unet.down_blocks] == ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"]


def test_too_many_levels_for_the_image_size():
    with pytest.raises(ValueError, match="below 2 px"):
        build_unet(load_config("cpu"), image_size=4, channels=1)


def test_unknown_yaml_key_names_the_file_and_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("unet:\n  block_out_channels: [8, 16]\ntrain:\n  batch_size: 4\n  learning_rate: 0.1\n")
    with pytest.raises(ValueError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert "learning_rate" in message
    assert "Extra inputs are not permitted" in message


def test_unknown_top_level_key_and_bad_yaml(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("unets: {}\n")
    with pytest.raises(ValueError, match=r"(?s)extra\.yaml.*unets"):
        load_config(extra)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ValueError, match=r"broken\.yaml: cannot read diffusion config"):
        load_config(broken)
    with pytest.raises(ValueError, match=r"missing\.yaml: cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_file_config_takes_its_name_from_the_file(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text("unet:\n  block_out_channels: [8, 16]\n  norm_num_groups: 4\n")
    config = load_config(path, max_steps=2)
    assert config.preset == "small"
    assert config.unet.block_out_channels == (8, 16)
    assert config.train.max_steps == 2


# -- lost or half-written work (issue #18) ----------------------------------------------------------

DAMAGE = {
    "latest names a missing folder": ("latest", None),
    "truncated state.pt": ("step_0000006", "state.pt"),
    "truncated model.safetensors": ("step_0000006", "model.safetensors"),
    "truncated ema.safetensors": ("step_0000006", "ema.safetensors"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_resume_falls_back_to_the_newest_readable_checkpoint(
    prepared_small_ndsb, make_trainer, tiny_run, tmp_path, case
):
    out = shutil.copytree(tiny_run, tmp_path / "run")
    folder, name = DAMAGE[case]
    if name is None:
        (out / "checkpoints" / "latest").write_text("step_0000009")
        bad = "step_0000009"
    else:
        file = out / "checkpoints" / folder / name
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
        bad = str(file)
    with pytest.warns(UserWarning, match=f"skipping checkpoint .*{bad}"):
        trainer = make_trainer(prepared_small_ndsb, out, resume=True)
        result = trainer.train()
    assert result.step == 6
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3, 4, 5, 6]
    # The older checkpoint it did not replace is kept, and the redone step 6 is the uninterrupted one.
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_0000003", "step_0000006"]
    model_a, ema_a, _ = load_checkpoint(tiny_run / "checkpoints" / "step_0000006")
    model_b, ema_b, state_b = load_checkpoint(out / "checkpoints" / "step_0000006")
    assert_same_weights(model_a, model_b)
    assert_same_weights(ema_a, ema_b)
    assert state_b["step"] == 6


def test_restart_before_the_first_checkpoint_does_not_repeat_logged_steps(
    prepared_small_ndsb, make_trainer, tmp_path
):
    out = tmp_path / "run"
    out.mkdir()
    # A run killed at step 2, before its first checkpoint, mid-way through writing a record.
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 1.0}\n{"step": 3, "lo')
    result = make_trainer(prepared_small_ndsb, out, resume=True, max_steps=3).train()
    assert result.step == 3
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3]
    assert all(m["loss"] != 1.0 for m in read_metrics(out))


def test_an_interrupted_training_exits_non_zero():
    from rich.console import Console
    from typer import Exit

    from plankdiff.diffusion.cli import INTERRUPTED, train_and_report

    class Stopped:  # what a trainer returns after SIGTERM (see the test above)
        def train(self):
            return TrainResult(None, 2, 0.1, 16, 0.5, "interrupt")

    with pytest.raises(Exit) as stopped:
        train_and_report(Stopped(), Console(width=200, color_system=None))
    assert stopped.value.exit_code == INTERRUPTED != 0


KILLED_TRAINING = """
import sys, torch
from plankdiff.data.prepare import PreparedDataset
from plankdiff.diffusion.config import load_config
from plankdiff.diffusion.train import DiffusionTrainer
torch.manual_seed(0)
config = load_config("tiny", max_steps=12, checkpoint_every=2)
trainer = DiffusionTrainer(config=config, dataset=PreparedDataset(sys.argv[1]), out=sys.argv[2],
                           resume=True, show_progress=False)
print("training", flush=True)
trainer.train()
"""


@pytest.mark.slow
def test_kill_9_at_a_random_point_then_resume_equals_an_uninterrupted_run(
    prepared_small_ndsb, make_trainer, tmp_path
):
    straight = make_trainer(prepared_small_ndsb, tmp_path / "straight", max_steps=12, checkpoint_every=2)
    started = time.perf_counter()
    straight.train()
    duration = time.perf_counter() - started
    out = tmp_path / "killed"
    killed = kill_9_at_a_random_point(
        KILLED_TRAINING, prepared_small_ndsb.root, out, ready="training", within=duration
    )
    resumed = make_trainer(prepared_small_ndsb, out, resume=True, max_steps=12, checkpoint_every=2).train()
    assert resumed.step == 12, f"killed after {killed.delay:.2f} s"
    model_a, ema_a, state_a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step_0000012")
    model_b, ema_b, state_b = load_checkpoint(out / "checkpoints" / "step_0000012")
    assert_same_weights(model_a, model_b)
    assert_same_weights(ema_a, ema_b)
    assert torch.equal(state_a["generator"], state_b["generator"])
    assert [m["loss"] for m in read_metrics(out)] == [m["loss"] for m in read_metrics(tmp_path / "straight")]


# -- issue #15 §3: timestep sampling, EMA warm-up, shapes at equal FLOPs ---------------------------


def test_default_timestep_sampling_takes_the_same_random_draws_as_before(
    prepared_small_ndsb, make_trainer, tmp_path
):
    """Runs begun before the option existed resume identically: a step with the default consumes the
    generator exactly as the former `torch.randint(0, T, (n,))` did, and draws the same t."""
    trainer = make_trainer(prepared_small_ndsb, tmp_path / "uniform")
    assert trainer.config.train.timestep_sampling == UniformTimesteps()
    indices = torch.arange(8)
    replay = torch.Generator()
    replay.set_state(trainer.generator.get_state())
    trainer.loss(indices)
    x0 = dihedral_augment(to_model_range(trainer.images[indices]), replay)
    torch.randn(x0.shape, generator=replay)
    torch.randint(0, 1000, (8,), generator=replay)
    assert torch.equal(replay.get_state(), trainer.generator.get_state())
    seeded = [torch.Generator().manual_seed(3) for _ in range(2)]
    drawn = draw_timesteps(UniformTimesteps(), n=64, num_timesteps=1000, generator=seeded[0])
    assert torch.equal(drawn, torch.randint(0, 1000, (64,), generator=seeded[1]))


@pytest.mark.parametrize("power", [2.0, 3.0])
def test_low_noise_timesteps_follow_their_power_law_and_cover_every_t(power):
    n = 400_000
    t = draw_timesteps(
        LowNoiseTimesteps(power=power), n=n, num_timesteps=1000, generator=torch.Generator().manual_seed(0)
    )
    assert t.dtype == torch.long and int(t.min()) == 0 and int(t.max()) == 999
    # t/T ~ Beta(1/power, 1): the share of t < τ is (τ/T)^(1/power), e.g. sqrt(0.1) = 0.316 for τ = 100.
    for tau in (26, 100, 200, 500):
        assert abs(float((t < tau).float().mean()) - (tau / 1000) ** (1 / power)) < 0.004, tau
    assert float((t >= 900).float().mean()) > 0.02  # the high-noise end still trains


def test_timestep_sampling_is_validated_and_recorded(prepared_small_ndsb, make_trainer, tmp_path):
    with pytest.raises(ValueError, match=r"timestep.sampling.*greater than 1"):
        load_config("tiny", timestep_sampling={"kind": "low-noise", "power": 1})
    with pytest.raises(ValueError, match=r"timestep.sampling.*'uniform', 'low-noise'"):
        load_config("tiny", timestep_sampling={"kind": "cosine"})
    out = tmp_path / "low-noise"
    trainer = make_trainer(
        prepared_small_ndsb,
        out,
        max_steps=1,
        timestep_sampling={"kind": "low-noise", "power": 2.5},
        ema_warmup={"inv_gamma": 2.0, "power": 0.75},
    )
    assert trainer.train().step == 1
    recorded = json.loads((out / "config.json").read_text())["diffusion"]["train"]
    assert recorded["timestep_sampling"] == {"kind": "low-noise", "power": 2.5}
    assert recorded["ema_warmup"] == {"inv_gamma": 2.0, "power": 0.75}
    assert load_config("tiny").train.ema_warmup is None  # default: the EMA of every earlier run


def ema_distance(trainer) -> float:
    """How far the EMA is from the live weights (summed squared differences)."""
    live = list(trainer.model.parameters())
    return sum(float((e - w).square().sum()) for e, w in zip(trainer.ema.shadow_params, live, strict=True))


def test_ema_warmup_reaches_diffusers_and_tracks_the_live_weights(
    prepared_small_ndsb, make_trainer, tmp_path
):
    steps, batch = 8, torch.arange(8)
    runs = {}
    for name, warmup in {"default": None, "warm": {"inv_gamma": 1.0, "power": 2 / 3}}.items():
        trainer = make_trainer(prepared_small_ndsb, tmp_path / name, ema_decay=0.999, ema_warmup=warmup)
        initial = [p.detach().clone() for p in trainer.model.parameters()]
        for _ in range(steps):
            trainer.train_step(batch)
        runs[name] = trainer
    default, warm = runs["default"], runs["warm"]
    assert (default.ema.use_ema_warmup, warm.ema.use_ema_warmup) == (False, True)
    # diffusers' decay at EMA step s (it counts from s - 1): the (1 + s)/(10 + s) ramp by default,
    # 1 - (1 + s/inv_gamma)^-power with the warm-up; both capped at ema_decay.
    assert default.ema.cur_decay_value == pytest.approx(steps / (steps + 9))
    assert warm.ema.cur_decay_value == pytest.approx(1 - steps ** (-2 / 3))
    # A fixed 0.999 decay from step 1 would keep 0.999^8 = 99 % of the initial weights. Both EMAs
    # are far closer to the live weights than that; the warm-up averages over a longer window.
    fixed = sum(
        float((0.999**steps * (w0 - w.detach())).square().sum())
        for w0, w in zip(initial, warm.model.parameters(), strict=True)
    )
    assert ema_distance(default) < ema_distance(warm) < 0.5 * fixed


def test_features_are_read_from_the_ema_weights(tiny_run):
    model, ema, _ = load_checkpoint(tiny_run / "checkpoints" / "step_0000006")
    backbone, _ = load_backbone(tiny_run)
    weights = dict(backbone.named_parameters())
    assert weights.keys() == ema.keys()
    assert all(torch.equal(weights[name], ema[name]) for name in ema)
    assert not all(torch.equal(weights[name], model[name]) for name in ema)  # not the live weights


def flops_per_image(preset: str, size: int) -> float:
    network = build_unet(load_config(preset), image_size=size, channels=1)
    return training_step_flops(network, batch=2, channels=1, size=size, device="cpu") / 2


def test_shape_presets_cost_what_the_cpu_preset_costs():
    cpu = flops_per_image("cpu", 32)
    assert 3.1e9 < cpu < 3.3e9  # bench/results/flops.md: 3.20 GFLOP per image
    assert 0.9 < flops_per_image("cpu-wide8", 32) / cpu < 1.1
    wide = build_unet(load_config("cpu-wide8"), image_size=32, channels=1)
    assert wide.config.block_out_channels[0] < 32 and wide.config.block_out_channels[-1] > 128
    # 64 px: the same network costs ~4x per image; a quarter of the batch keeps the FLOPs per step,
    # so a FLOP budget gives cpu-64 the same number of steps on a quarter of the images.
    ratio = flops_per_image("cpu-64", 64) / cpu
    assert 3.8 < ratio < 4.2
    assert load_config("cpu-64").unet == load_config("cpu").unet
    assert load_config("cpu-64").train.batch_size * 4 == load_config("cpu").train.batch_size
