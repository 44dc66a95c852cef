"""Self-supervised DDPM training: the denoiser learns to predict the noise added to plankton images.

The network (`model.py`), the noise process (diffusers' DDPMScheduler) and the training loop
(`plankdiff.training`, shared with the baselines) are kept apart; this module holds the DDPM's
objective, optimiser and EMA. The trainer runs under accelerate, so `accelerate launch -m plankdiff.cli diffusion train …`
runs the same code on several GPUs; on one CPU it is a plain loop.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDIMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from PIL import Image

from plankdiff.budget import count_flops
from plankdiff.data.prepare import PreparedDataset
from plankdiff.devices import default_device
from plankdiff.diffusion.config import DiffusionConfig, TimestepSampling, UniformTimesteps
from plankdiff.diffusion.model import build_scheduler, build_unet, count_parameters
from plankdiff.provenance import changed_fields, git_sha
from plankdiff.training import RUN_LENGTH_FIELDS, LoopSettings, Trainer


def to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float [-1, 1], the range the DDPM's Gaussian prior assumes."""
    return pixels.float().div_(127.5).sub_(1.0)


def dihedral_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random element of the 8 flips and 90° rotations per image: orientation carries no class."""
    batch = x.shape[0]
    flip = torch.rand(batch, generator=generator) < 0.5
    turns = torch.randint(0, 4, (batch,), generator=generator)
    x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)
    out = x.clone()
    for k in (1, 2, 3):
        chosen = (turns == k).nonzero().flatten().to(x.device)
        if len(chosen):
            out[chosen] = torch.rot90(x[chosen], k, dims=(-2, -1))
    return out


def dihedral_augment_all(x: torch.Tensor) -> list[torch.Tensor]:
    """All 8 flips and 90° rotations of a batch, for orientation-averaged features."""
    return [torch.rot90(v, k, dims=(-2, -1)) for v in (x, x.flip(-1)) for k in range(4)]


def draw_timesteps(
    sampling: TimestepSampling, *, n: int, num_timesteps: int, generator: torch.Generator
) -> torch.Tensor:
    """`n` training timesteps in 0 … num_timesteps-1, drawn as `sampling` says (`TrainConfig`)."""
    if isinstance(sampling, UniformTimesteps):
        # Exactly the draw of every run before the option existed: same numbers from the same stream.
        return torch.randint(0, num_timesteps, (n,), generator=generator)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return (num_timesteps * u**sampling.power).floor().long().clamp_(max=num_timesteps - 1)


def training_step_flops(
    network: torch.nn.Module, *, batch: int, channels: int, size: int, device, cpu_attention: bool = False
) -> int:
    """Forward and backward FLOPs of one ε-prediction step of `network` on `batch` images (the
    network's gradients are left set: pass a copy). `cpu_attention`: see `count_flops` (off in
    training)."""
    x = torch.zeros(batch, channels, size, size, device=device)
    t = torch.zeros(batch, dtype=torch.long, device=device)
    with torch.random.fork_rng(devices=[]):  # dropout draws must not shift the run's random stream
        return count_flops(
            lambda: (network(x, t).sample - x).square().mean().backward(), cpu_attention=cpu_attention
        )


def settings_changes(record: dict, config: DiffusionConfig, *, ignore: tuple[str, ...]) -> list[str]:
    """How `config` differs from the settings a run recorded (its `config.json`), as
    `field: saved → now`, beyond the fields in `ignore`. The record is read through the model
    first, so a run recorded before an option existed compares as that option's default (the
    behaviour it trained with) and a former field name as its new one."""
    try:
        saved = DiffusionConfig.model_validate(record["diffusion"]).model_dump(mode="json")
    except (KeyError, TypeError, ValueError) as error:  # pydantic's ValidationError is a ValueError
        return [f"the recorded settings cannot be read ({str(error).splitlines()[0]})"]
    return changed_fields(saved, config.model_dump(mode="json"), ignore=ignore)


class DiffusionTrainer(Trainer):
    """The DDPM's part of the training loop (`plankdiff.training.Trainer`): the U-Net and its EMA,
    AdamW with a constant-after-warm-up schedule, and the noise-prediction loss.

    The EMA of the weights (diffusers' `EMAModel`: `ema_decay`, optionally `ema_warmup`) is what a
    run leaves as its backbone: `ema/` holds it, and `load_backbone` (features, the study, export,
    sampling) reads `ema/`, never the live weights, which only the checkpoints keep for resuming."""

    description = "diffusion train"
    record_file = "config.json"

    def __init__(
        self,
        *,
        config: DiffusionConfig,
        dataset: PreparedDataset,
        out: Path | str,
        rows: np.ndarray | None = None,
        resume: bool = False,
        show_progress: bool = True,
    ):
        self.config = config
        rows = np.arange(len(dataset)) if rows is None else np.asarray(rows)
        if not len(rows):
            raise ValueError(f"{dataset.root}: no images selected for training")
        train = config.train
        # The loop applies autocast itself (`plankdiff.precision`), the same way for every method.
        self.accelerator = Accelerator(mixed_precision="no", cpu=default_device().type == "cpu")
        channels, size = dataset.images.shape[1], dataset.images.shape[2]
        torch.manual_seed(train.seed)  # the initial weights are part of what the seed fixes
        self.model = build_unet(config, image_size=size, channels=channels)
        self.ema_model = build_unet(config, image_size=size, channels=channels).eval().requires_grad_(False)
        self.noise = build_scheduler(config)
        if train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        warmup = train.ema_warmup
        self.ema = EMAModel(
            self.model.parameters(),
            decay=train.ema_decay,
            use_ema_warmup=warmup is not None,
            **({"inv_gamma": warmup.inv_gamma, "power": warmup.power} if warmup else {}),
        )
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=train.lr,
            weight_decay=train.weight_decay,
            fused=True,  # one kernel for all parameters, on CPU and GPU alike (torch >= 2.4)
        )
        self.lr_schedule = get_scheduler(
            "constant_with_warmup", optimizer=self.optimizer, num_warmup_steps=train.warmup_steps
        )
        self.model, self.optimizer, self.lr_schedule = self.accelerator.prepare(
            self.model, self.optimizer, self.lr_schedule
        )
        self.ema.to(self.accelerator.device)
        self.images = torch.from_numpy(np.ascontiguousarray(dataset.images[np.sort(rows)]))
        self._start_loop(
            out=out,
            dataset=dataset,
            rows=rows,
            settings=LoopSettings.of(train),
            device=self.accelerator.device,
            seed=train.seed + self.accelerator.process_index,
            resume=resume,
            show_progress=show_progress,
        )

    def _count_step_flops(self) -> int:
        """Forward and backward FLOPs of one training step, counted on a copy of the network."""
        network = copy.deepcopy(self.accelerator.unwrap_model(self.model)).float()
        channels, size = self.images.shape[1], self.images.shape[2]
        return training_step_flops(
            network, batch=self.config.train.batch_size, channels=channels, size=size, device=self.device
        )

    # -- bookkeeping ----------------------------------------------------------------------------
    def _run_config(self) -> dict:
        return {
            "diffusion": self.config.model_dump(mode="json"),
            "dataset": {"name": self.dataset.name, "root": str(self.dataset.root), "key": self.dataset.key},
            "training_rows": len(self.rows),
            "training_rows_hash": int(np.sum(self.rows.astype(np.int64) * 2654435761 % 1000003)),
            "image_shape": list(self.images.shape[1:]),
            "parameters": count_parameters(self.accelerator.unwrap_model(self.model)),
        }

    def _record(self) -> dict:
        return self._run_config() | self._loop_record() | {"git_sha": git_sha()}

    def _check_resumable(self, saved: dict) -> None:
        current = self._run_config()
        for key in ("dataset", "training_rows_hash", "image_shape"):
            if saved.get(key) != current[key]:
                raise ValueError(
                    f"{self.out / 'config.json'}: cannot resume, {key} differs "
                    f"(saved {saved.get(key)}, now {current[key]})"
                )
        # What the run learns must not change half-way (a run may be extended or moved to other
        # hardware: `RUN_LENGTH_FIELDS`).
        changed = settings_changes(saved, self.config, ignore=RUN_LENGTH_FIELDS)
        if changed:
            raise ValueError(
                f"{self.out / 'config.json'}: cannot resume, the network, noise or training settings "
                f"differ ({'; '.join(changed)})"
            )

    def _named(self, params) -> dict[str, torch.Tensor]:
        names = [n for n, _ in self.accelerator.unwrap_model(self.model).named_parameters()]
        return dict(zip(names, params, strict=True))

    def _checkpoint(self) -> tuple[dict, dict, dict]:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "ema_optimization_step": self.ema.optimization_step,
        }
        weights = self.accelerator.unwrap_model(self.model).state_dict()
        return weights, self._named(self.ema.shadow_params), state

    def _after_save(self) -> None:
        self.ema.copy_to(self.ema_model.parameters())
        _save_pretrained_atomic(self.ema_model, self.out / "ema")

    def _load(self, weights: dict, ema: dict, state: dict) -> None:
        self.accelerator.unwrap_model(self.model).load_state_dict(weights)
        names = [n for n, _ in self.accelerator.unwrap_model(self.model).named_parameters()]
        for shadow, name in zip(self.ema.shadow_params, names, strict=True):
            shadow.data.copy_(ema[name].to(shadow.device))
        self.ema.optimization_step = int(state["ema_optimization_step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])

    def _on_start(self) -> None:
        self.noise.save_pretrained(self.out / "scheduler")

    @property
    def _processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def _is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    def _modules_to_train(self) -> list[torch.nn.Module]:
        return [self.model]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.model.parameters())

    # -- the objective --------------------------------------------------------------------------
    def loss(self, indices: torch.Tensor) -> torch.Tensor:
        """ε-prediction: the mean squared error between the added noise and the U-Net's estimate."""
        train = self.config.train
        x0 = to_model_range(self.images[indices])
        if train.augment:
            x0 = dihedral_augment(x0, self.generator)
        noise = torch.randn(x0.shape, generator=self.generator)
        t = draw_timesteps(
            train.timestep_sampling,
            n=x0.shape[0],
            num_timesteps=self.noise.config.num_train_timesteps,
            generator=self.generator,
        )
        noisy = self.noise.add_noise(x0, noise, t).to(self.device)
        if train.channels_last:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        predicted = self.model(noisy, t.to(self.device)).sample
        return F.mse_loss(predicted.float(), noise.to(self.device))

    def _backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def _clip_gradients(self) -> None:
        if self.accelerator.sync_gradients:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)

    def _after_step(self) -> None:
        self.lr_schedule.step()
        self.ema.step(self.model.parameters())

    def _after_log(self) -> None:
        every = self.config.train.sample_every
        if every and self.step % every == 0:
            self.ema.copy_to(self.ema_model.parameters())
            save_grid(
                sample_images(self.ema_model, self.noise, n=16, steps=25),
                self.out / "samples" / f"step_{self.step:07d}.png",
            )


def _save_pretrained_atomic(model, folder: Path) -> None:
    staging = folder.with_name(f".{folder.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(staging, folder)
    shutil.rmtree(old, ignore_errors=True)


@torch.inference_mode()
def sample_images(unet, noise_scheduler, *, n: int, steps: int = 50, seed: int = 0) -> np.ndarray:
    """DDIM (η = 0) samples from the denoiser, as uint8 [n, C, S, S]."""
    ddim = DDIMScheduler.from_config(noise_scheduler.config)
    ddim.set_timesteps(steps)
    device = next(unet.parameters()).device
    config = unet.config
    x = torch.randn(
        (n, config.in_channels, config.sample_size, config.sample_size),
        generator=torch.Generator().manual_seed(seed),
    ).to(device)
    was_training = unet.training
    unet.eval()
    for t in ddim.timesteps:
        x = ddim.step(unet(x, t).sample, t, x).prev_sample
    unet.train(was_training)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


def save_grid(images: np.ndarray, path: Path, *, scale: int = 2) -> Path:
    n, channels, size, _ = images.shape
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * (size + 1), columns * (size + 1), channels), dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (size + 1) : r * (size + 1) + size, c * (size + 1) : c * (size + 1) + size] = (
            image.transpose(1, 2, 0)
        )
    picture = Image.fromarray(grid[:, :, 0] if channels == 1 else grid)
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
