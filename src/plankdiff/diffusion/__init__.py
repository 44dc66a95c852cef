"""Diffusion stage: a DDPM denoiser (diffusers' UNet2DModel + DDPMScheduler) trained without labels."""

from plankdiff.diffusion.config import DiffusionConfig, load_config
from plankdiff.diffusion.model import build_scheduler, build_unet, load_backbone
from plankdiff.diffusion.train import DiffusionTrainer, TrainingDiverged, sample_images

__all__ = [
    "DiffusionConfig",
    "DiffusionTrainer",
    "TrainingDiverged",
    "build_scheduler",
    "build_unet",
    "load_backbone",
    "load_config",
    "sample_images",
]
