"""Validated diffusion configurations; named presets live in `plankdiff/configs/diffusion/*.yaml`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Literal, get_args

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


class UniformTimesteps(Strict):
    """t drawn uniformly from 0 … T-1, as in Ho et al. (2020): the default, with the same random
    draws as every run before the option existed (so those runs resume identically)."""

    kind: Literal["uniform"] = "uniform"


class LowNoiseTimesteps(Strict):
    """t = floor(T · u^power) with u uniform on [0, 1): more training steps at small t, where the
    features are read (t ≤ 25 wins; t ≥ 200 is far worse), while every t keeps some mass.

    Why this form: one parameter, every share has a closed form (t/T follows Beta(1/power, 1), so
    the share of t < τ is (τ/T)^(1/power): for power 2 and T = 1000, 32 % of draws have t < 100 and
    16 % have t ≤ 25, against 10 % and 2.6 % for uniform), and the largest t still comes up (about
    1/(power · T) per t near T), so the denoiser keeps learning the whole noise range and sampling
    still works. power 1 would be uniform in law; use `uniform` for that."""

    kind: Literal["low-noise"] = "low-noise"
    power: float = Field(2.0, gt=1)


TimestepSampling = Annotated[UniformTimesteps | LowNoiseTimesteps, Field(discriminator="kind")]


class EMAWarmup(Strict):
    """diffusers' EMA warm-up (`EMAModel(use_ema_warmup=True, inv_gamma=…, power=…)`): the decay at
    EMA step s is 1 - (1 + s/inv_gamma)^-power, capped at `ema_decay`.

    Without it (the default) diffusers still ramps the decay as (1 + s)/(10 + s), capped at
    `ema_decay`: the EMA of a 122-step run (the `cpu` preset at 25 TFLOP) already weighs the
    initial weights 0 and averages mostly its last ~12 steps. The warm-up with power 2/3 averages
    over a longer window (mean age ~21 steps at step 122; power 1 is the plain mean of every step's
    weights), i.e. more smoothing, which is what a short, noisy run may or may not want."""

    inv_gamma: float = Field(1.0, gt=0)
    power: float = Field(2 / 3, gt=0)


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
    ema_warmup: EMAWarmup | None = None  # None: diffusers' (1 + s)/(10 + s) ramp, as before
    # Which noise levels the training steps see (the loss is not reweighted).
    timestep_sampling: TimestepSampling = UniformTimesteps()
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
