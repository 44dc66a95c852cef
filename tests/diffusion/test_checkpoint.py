"""Checkpoints: atomic layout, pruning, safe loading, and the EMA backbone handed to later stages."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file

from plankdiff.diffusion.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from plankdiff.diffusion.config import load_config
from plankdiff.diffusion.model import build_unet, load_backbone


def weights(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(4, 3, generator=generator),
        "conv.bias": torch.randn(4, generator=generator),
    }


def state(step: int) -> dict:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    return {
        "step": step,
        "elapsed": 1.5 * step,
        "optimizer": optimizer.state_dict(),
        "generator": torch.Generator().manual_seed(step).get_state(),
        "torch_rng": torch.get_rng_state(),
    }


def save(root, step: int, keep: int = 2):
    return save_checkpoint(
        root, step, model=weights(step), ema=weights(100 + step), state=state(step), keep=keep
    )


def test_round_trip(tmp_path):
    path = save(tmp_path / "checkpoints", 7)
    assert path == tmp_path / "checkpoints" / "step_0000007"
    assert sorted(p.name for p in path.iterdir()) == ["ema.safetensors", "model.safetensors", "state.pt"]
    model, ema, restored = load_checkpoint(path)
    for name, tensor in weights(7).items():
        assert torch.equal(model[name], tensor)
    for name, tensor in weights(107).items():
        assert torch.equal(ema[name], tensor)
    assert restored["step"] == 7 and restored["elapsed"] == 10.5
    assert torch.equal(restored["generator"], torch.Generator().manual_seed(7).get_state())


def test_latest_and_pruning(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (3, 6, 9, 12):
        newest = save(root, step, keep=2)
        assert (root / "latest").read_text() == newest.name
        assert latest_checkpoint(root) == newest
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000009", "step_0000012"]
    assert not list(root.glob(".staging_*")) and not list(root.glob(".*.tmp"))
    save(root, 15, keep=1)
    assert sorted(p.name for p in root.glob("step_*")) == ["step_0000015"]


def test_saving_the_same_step_again_replaces_it(tmp_path):
    root = tmp_path / "checkpoints"
    save(root, 3)
    path = save_checkpoint(root, 3, model=weights(50), ema=weights(51), state=state(3), keep=2)
    assert torch.equal(load_checkpoint(path)[0]["conv.bias"], weights(50)["conv.bias"])
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000003"]


def test_an_interrupted_write_leaves_the_previous_checkpoint_newest(tmp_path):
    root = tmp_path / "checkpoints"
    good = save(root, 3)
    # A kill while step 6 was being written: a half-filled staging folder, `latest` untouched.
    (root / ".staging_0000006").mkdir()
    (root / ".staging_0000006" / "model.safetensors").write_bytes(b"half")
    assert latest_checkpoint(root) == good
    # A checkpoint folder without its state is never handed out: the previous complete one is.
    (root / "latest").write_text("step_0000006")
    (root / "step_0000006").mkdir()
    assert latest_checkpoint(root) == good
    assert latest_checkpoint(tmp_path / "nowhere") is None
    # The next save cleans the leftover staging folder up.
    save(root, 6)
    assert not list(root.glob(".staging_*"))
    assert latest_checkpoint(root) == root / "step_0000006"


def test_training_state_loads_without_unpickling_objects(tiny_run):
    path = latest_checkpoint(tiny_run / "checkpoints")
    saved = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    assert saved["step"] == 6 and saved["images_seen"] == 48
    assert saved["ema_optimization_step"] == 6
    assert isinstance(saved["generator"], torch.Tensor) and isinstance(saved["torch_rng"], torch.Tensor)
    assert saved["optimizer"]["state"]  # AdamW moments
    assert saved["lr_schedule"]["last_epoch"] == 6


def test_load_backbone_of_a_run_is_the_ema_denoiser(tiny_run):
    unet, scheduler = load_backbone(tiny_run)
    assert isinstance(unet, UNet2DModel)
    assert not unet.training
    assert not any(p.requires_grad for p in unet.parameters())
    assert (unet.config.sample_size, unet.config.in_channels) == (16, 1)
    checkpoint = latest_checkpoint(tiny_run / "checkpoints")
    ema = load_file(checkpoint / "ema.safetensors")
    loaded = dict(unet.named_parameters())
    assert loaded.keys() == ema.keys()
    for name, tensor in ema.items():
        assert torch.equal(loaded[name], tensor), name
    # ...and not the raw training weights, which EMA with decay 0.9 has not caught up with.
    model = load_file(checkpoint / "model.safetensors")
    assert any(not torch.equal(loaded[name], model[name]) for name in ema)
    assert isinstance(scheduler, DDPMScheduler)
    assert scheduler.config.num_train_timesteps == load_config("tiny").noise.num_train_timesteps


def test_load_backbone_of_the_ema_folder_finds_the_run_scheduler(tiny_run):
    unet, scheduler = load_backbone(tiny_run / "ema")
    assert scheduler.config.beta_end == pytest.approx(0.02)
    reference, _ = load_backbone(tiny_run)
    for (name, a), (_, b) in zip(unet.named_parameters(), reference.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_load_backbone_accepts_a_bare_diffusers_folder(tmp_path):
    torch.manual_seed(0)
    unet = build_unet(load_config("tiny"), image_size=16, channels=1)
    unet.save_pretrained(tmp_path / "bare", safe_serialization=True)
    loaded, scheduler = load_backbone(tmp_path / "bare")
    for (name, a), (_, b) in zip(unet.named_parameters(), loaded.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert scheduler.config.num_train_timesteps == 1000
    assert scheduler.config.beta_schedule == "linear"


def test_load_backbone_of_something_else_says_what_it_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a plankdiff diffusion run"):
        load_backbone(tmp_path)
