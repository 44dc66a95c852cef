"""The denoiser and the noise process, both from diffusers; nothing here re-implements them."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

from plankdiff.devices import torch_device
from plankdiff.diffusion.config import DiffusionConfig


def build_unet(config: DiffusionConfig, *, image_size: int, channels: int) -> UNet2DModel:
    unet = config.unet
    problem = config.size_problem(image_size)
    if problem:
        raise ValueError(f"preset {config.preset}: {problem}")
    resolutions = [image_size // 2**level for level in range(len(unet.block_out_channels))]
    down = ["AttnDownBlock2D" if r in unet.attention_resolutions else "DownBlock2D" for r in resolutions]
    up = ["AttnUpBlock2D" if r in unet.attention_resolutions else "UpBlock2D" for r in reversed(resolutions)]
    return UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=unet.block_out_channels,
        layers_per_block=unet.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        dropout=unet.dropout,
        norm_num_groups=unet.norm_num_groups,
        attention_head_dim=None,
    )


def build_scheduler(config: DiffusionConfig) -> DDPMScheduler:
    noise = config.noise
    return DDPMScheduler(
        num_train_timesteps=noise.num_train_timesteps,
        beta_start=noise.beta_start,
        beta_end=noise.beta_end,
        beta_schedule=noise.beta_schedule,
        prediction_type=noise.prediction_type,
    )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_backbone(
    path: Path | str, *, device: str | torch.device = "cpu"
) -> tuple[UNet2DModel, DDPMScheduler]:
    """The frozen EMA denoiser of a plankdiff run, or any diffusers `save_pretrained` folder, on
    `device` (`plankdiff.devices.torch_device`: "auto" is the GPU where there is one)."""
    path = Path(path)
    weights = "diffusion_pytorch_model.safetensors"
    folder = path / "ema" if (path / "ema" / weights).exists() else path
    if not (folder / "config.json").exists() or not (folder / weights).exists():
        raise FileNotFoundError(
            f"{path}: neither a plankdiff diffusion run with a checkpoint (ema/{weights}) "
            f"nor a diffusers UNet2DModel folder ({weights} + config.json)"
        )
    unet = UNet2DModel.from_pretrained(folder, use_safetensors=True)
    scheduler_dir = path / "scheduler" if (path / "scheduler").exists() else folder.parent / "scheduler"
    if (scheduler_dir / "scheduler_config.json").exists():
        scheduler = DDPMScheduler.from_pretrained(scheduler_dir)
    else:  # a bare UNet folder: assume the standard DDPM process
        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    return unet.to(torch_device(device)).eval().requires_grad_(False), scheduler
