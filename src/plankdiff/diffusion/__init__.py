"""Diffusion stage: a DDPM denoiser (diffusers' UNet2DModel + DDPMScheduler) trained without labels."""

from plankdiff._lazy import lazy_exports

_EXPORTS = {
    "DiffusionConfig": "config",
    "DiffusionTrainer": "train",
    "build_scheduler": "model",
    "build_unet": "model",
    "load_backbone": "model",
    "load_config": "config",
    "sample_images": "train",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
