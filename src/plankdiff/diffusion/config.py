"""Validated diffusion configurations; named presets live in `plankdiff/configs/diffusion/*.yaml`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from plankdiff.choices import Precision, Preset
from plankdiff.validation import problems


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UNetConfig(Strict):
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = Field(2, ge=1)
    # Resolutions (in pixels) whose down and up blocks carry self-attention.
    attention_resolutions: tuple[int, ...] = (16,)
    dropout: float = Field(0.1, ge=0, lt=1)
    norm_num_groups: int = Field(32, ge=1)


NUM_TIMESTEPS = 1000  # T of every shipped preset


class NoiseConfig(Strict):
    """The DDPM process of Ho et al. (2020): ε-prediction, linear β from 1e-4 to 0.02 over T = 1000."""

    num_train_timesteps: int = NUM_TIMESTEPS
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: Literal["linear"] = "linear"
    prediction_type: Literal["epsilon"] = "epsilon"


class TrainConfig(Strict):
    @model_validator(mode="before")
    @classmethod
    def _former_names(cls, raw: object) -> object:
        """`mixed_precision: no|auto|bf16` (runs and YAML files written before `precision`)."""
        if isinstance(raw, dict) and "mixed_precision" in raw and "precision" not in raw:
            raw = dict(raw)
            former = raw.pop("mixed_precision")
            raw["precision"] = "fp32" if former == "no" else former
        return raw

    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-4, gt=0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    ema_decay: float = Field(0.999, gt=0, lt=1)
    max_steps: int = Field(10_000, ge=1)
    max_minutes: float | None = Field(None, gt=0)
    max_tflops: float | None = Field(None, gt=0)  # training FLOPs budget, in units of 1e12
    augment: bool = True  # flips and 90° rotations: plankton have no canonical orientation
    log_every: int = Field(25, ge=1)
    sample_every: int = Field(500, ge=0)  # 0: no sample grids during training
    checkpoint_every: int = Field(250, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    # auto: bf16 autocast where the device has bf16 units (plankdiff.precision), else fp32.
    precision: Precision = "auto"
    channels_last: bool = False  # measured: no gain on CPU (bench/results); set for GPUs
    seed: int = 0


class DiffusionConfig(Strict):
    preset: str = "custom"
    unet: UNetConfig = UNetConfig()
    noise: NoiseConfig = NoiseConfig()
    train: TrainConfig = TrainConfig()

    def size_problem(self, image_size: int) -> str | None:
        """Why the U-Net cannot take `image_size` px images, or None. Each level but the last halves
        the image: below 2 px nothing is left, and an odd side makes the decoder's upsampled map one
        pixel larger than its skip connection (diffusers then fails at the first forward pass)."""
        levels = len(self.unet.block_out_channels)
        factor = 2 ** (levels - 1)
        if image_size // factor < 2:
            return f"{levels} levels halve {image_size} px below 2 px; use fewer levels or larger images"
        if image_size % factor:
            return f"{levels} levels need a size that is a multiple of {factor} px, not {image_size}"
        return None


PRESETS: tuple[str, ...] = get_args(Preset)


def load_config(preset_or_path: str | Path, **train_overrides) -> DiffusionConfig:
    """A shipped preset by name, or a YAML file; `train_overrides` replace fields of `train`."""
    if str(preset_or_path) in PRESETS:
        source = resources.files("plankdiff") / "configs" / "diffusion" / f"{preset_or_path}.yaml"
        name = str(preset_or_path)
    else:
        source, name = Path(preset_or_path), Path(preset_or_path).stem
    try:
        raw = yaml.safe_load(source.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{source}: cannot read diffusion config: {error}") from None
    overrides = {k: v for k, v in train_overrides.items() if v is not None}
    raw.setdefault("preset", name)
    raw["train"] = {**raw.get("train", {}), **overrides}
    try:
        return DiffusionConfig.model_validate(raw)
    except ValidationError as error:
        raise ValueError(
            problems(error, source=source, what="diffusion config", flags=overrides, under=("train",))
        ) from None
