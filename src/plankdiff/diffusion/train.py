"""Self-supervised DDPM training: the denoiser learns to predict the noise added to plankton images.

The network (`model.py`), the noise process (diffusers' DDPMScheduler) and this trainer are kept
apart. The trainer runs under accelerate, so `accelerate launch -m plankdiff.cli diffusion train …`
runs the same code on several GPUs; on one CPU it is a plain loop.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDIMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from PIL import Image

from plankdiff.budget import count_flops, step_cap
from plankdiff.data.lineage import write_training_images
from plankdiff.data.prepare import PreparedDataset
from plankdiff.diffusion.checkpoint import (
    latest_checkpoint,
    loop_state,
    restore_loop_state,
    resume_point,
    save_checkpoint,
    truncate_log,
)
from plankdiff.diffusion.config import DiffusionConfig
from plankdiff.diffusion.model import build_scheduler, build_unet, count_parameters
from plankdiff.progress import progress_bar
from plankdiff.provenance import git_sha, read_json, write_json


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the newest checkpoint on disk is the last good state."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    elapsed_minutes: float
    images_seen: int
    last_loss: float
    stopped_by: str  # "steps", "flops", "time" or "interrupt"
    flops: float = 0.0  # training FLOPs (matrix products and convolutions, forward and backward)


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


@contextlib.contextmanager
def stop_signals():
    """While open, SIGTERM (and SIGINT, which background jobs ignore) only ask the training loop to
    end after the current step, so a checkpoint is written before exiting. Yields a function telling
    whether a stop was asked for; the previous handlers come back on exit, so later stages of the same
    process (a study) can be stopped again."""
    requested = []

    def handler(signum, _frame):
        requested.append(signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous[sig] = signal.signal(sig, handler)
    try:
        yield lambda: bool(requested)
    finally:
        for sig, former in previous.items():
            signal.signal(sig, former)


def dihedral_augment_all(x: torch.Tensor) -> list[torch.Tensor]:
    """All 8 flips and 90° rotations of a batch, for orientation-averaged features."""
    return [torch.rot90(v, k, dims=(-2, -1)) for v in (x, x.flip(-1)) for k in range(4)]


class DiffusionTrainer:
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
        self.config, self.dataset, self.out = config, dataset, Path(out)
        self.rows = np.arange(len(dataset)) if rows is None else np.asarray(rows)
        if not len(self.rows):
            raise ValueError(f"{dataset.root}: no images selected for training")
        self.resume, self.show_progress = resume, show_progress
        train = config.train
        use_gpu = torch.cuda.is_available()
        precision = "bf16" if use_gpu and train.mixed_precision in ("auto", "bf16") else "no"
        self.accelerator = Accelerator(mixed_precision=precision, cpu=not use_gpu)
        self.device = self.accelerator.device
        channels, size = dataset.images.shape[1], dataset.images.shape[2]
        torch.manual_seed(train.seed)  # the initial weights are part of what the seed fixes
        self.model = build_unet(config, image_size=size, channels=channels)
        self.ema_model = build_unet(config, image_size=size, channels=channels).eval().requires_grad_(False)
        self.noise = build_scheduler(config)
        if train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMAModel(self.model.parameters(), decay=train.ema_decay, use_ema_warmup=False)
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
        self.ema.to(self.device)
        self.generator = torch.Generator().manual_seed(train.seed + self.accelerator.process_index)
        self.images = torch.from_numpy(np.ascontiguousarray(dataset.images[np.sort(self.rows)]))
        self.step, self.elapsed, self.images_seen = 0, 0.0, 0
        self.flops_per_step = self._count_step_flops()

    def _count_step_flops(self) -> int:
        """Forward and backward FLOPs of one training step, counted on a copy of the network."""
        network = copy.deepcopy(self.accelerator.unwrap_model(self.model)).float()
        channels, size = self.images.shape[1], self.images.shape[2]
        x = torch.zeros(self.config.train.batch_size, channels, size, size, device=self.device)
        t = torch.zeros(len(x), dtype=torch.long, device=self.device)
        with torch.random.fork_rng(devices=[]):  # dropout draws must not shift the run's random stream
            return count_flops(lambda: (network(x, t).sample - x).square().mean().backward())

    # -- bookkeeping ----------------------------------------------------------------------------
    def _run_config(self) -> dict:
        return {
            "diffusion": self.config.model_dump(mode="json"),
            "dataset": {"name": self.dataset.name, "root": str(self.dataset.root), "key": self.dataset.key},
            "training_rows": len(self.rows),
            "training_rows_hash": int(np.sum(self.rows.astype(np.int64) * 2654435761 % 1000003)),
            "image_shape": list(self.images.shape[1:]),
            "parameters": count_parameters(self.accelerator.unwrap_model(self.model)),
            "flops_per_step": self.flops_per_step,
            "flops": self.flops_per_step * self.step,
        }

    def _check_resumable(self, saved: dict) -> None:
        current = self._run_config()
        for key in ("dataset", "training_rows_hash", "image_shape"):
            if saved.get(key) != current[key]:
                raise ValueError(
                    f"{self.out / 'config.json'}: cannot resume, {key} differs "
                    f"(saved {saved.get(key)}, now {current[key]})"
                )
        mine = {k: v for k, v in current["diffusion"].items() if k != "train"}
        theirs = {k: v for k, v in saved["diffusion"].items() if k != "train"}
        if mine != theirs:
            raise ValueError(
                f"{self.out / 'config.json'}: cannot resume, the network or noise settings differ"
            )

    def _state(self) -> dict:
        return loop_state(
            step=self.step, elapsed=self.elapsed, images_seen=self.images_seen, generator=self.generator
        ) | {
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "ema_optimization_step": self.ema.optimization_step,
        }

    def _named(self, params) -> dict[str, torch.Tensor]:
        names = [n for n, _ in self.accelerator.unwrap_model(self.model).named_parameters()]
        return dict(zip(names, params, strict=True))

    def save(self) -> Path:
        if not self.accelerator.is_main_process:
            return self.out
        unwrapped = self.accelerator.unwrap_model(self.model)
        path = save_checkpoint(
            self.out / "checkpoints",
            self.step,
            model=unwrapped.state_dict(),
            ema=self._named(self.ema.shadow_params),
            state=self._state(),
            keep=self.config.train.keep_checkpoints,
        )
        self.ema.copy_to(self.ema_model.parameters())
        _save_pretrained_atomic(self.ema_model, self.out / "ema")
        return path

    def _restore(self, loaded: tuple[dict, dict, dict]) -> None:
        weights, ema_weights, state = loaded
        self.accelerator.unwrap_model(self.model).load_state_dict(weights)
        names = [n for n, _ in self.accelerator.unwrap_model(self.model).named_parameters()]
        for shadow, name in zip(self.ema.shadow_params, names, strict=True):
            shadow.data.copy_(ema_weights[name].to(shadow.device))
        self.ema.optimization_step = int(state["ema_optimization_step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.step, self.elapsed, self.images_seen = restore_loop_state(state, self.generator)

    # -- the loop -------------------------------------------------------------------------------
    def train_step(self, indices: torch.Tensor) -> torch.Tensor:
        train = self.config.train
        x0 = to_model_range(self.images[indices])
        if train.augment:
            x0 = dihedral_augment(x0, self.generator)
        noise = torch.randn(x0.shape, generator=self.generator)
        t = torch.randint(0, self.noise.config.num_train_timesteps, (x0.shape[0],), generator=self.generator)
        noisy = self.noise.add_noise(x0, noise, t).to(self.device)
        if train.channels_last:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        with self.accelerator.autocast():
            predicted = self.model(noisy, t.to(self.device)).sample
        loss = F.mse_loss(predicted.float(), noise.to(self.device))
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss.item()} at step {self.step + 1}; stopped. The newest checkpoint in "
                f"{self.out / 'checkpoints'} is the last good state: lower the learning rate and --resume"
            )
        self.accelerator.backward(loss)
        if self.accelerator.sync_gradients:
            self.accelerator.clip_grad_norm_(self.model.parameters(), train.grad_clip)
        self.optimizer.step()
        self.lr_schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.model.parameters())
        return loss.detach()

    def train(self) -> TrainResult:
        train = self.config.train
        self.out.mkdir(parents=True, exist_ok=True)
        config_path = self.out / "config.json"
        checkpoint = latest_checkpoint(self.out / "checkpoints")
        if checkpoint is not None and not self.resume:
            raise FileExistsError(
                f"{self.out}: holds a run already; pass --resume to continue it or pick another --out"
            )
        found = resume_point(self.out / "checkpoints") if self.resume else None
        if found is not None:
            self._check_resumable(read_json(config_path))
            self._restore(found[1])
        truncate_log(self.out / "metrics.jsonl", self.step)  # a kill before any checkpoint: from 0
        if self.accelerator.is_main_process:
            write_json(config_path, self._run_config() | {"git_sha": git_sha()})
            write_training_images(self.out, self.dataset, self.rows)
            self.noise.save_pretrained(self.out / "scheduler")
        budget = train.max_minutes * 60 if train.max_minutes else math.inf
        log = open(self.out / "metrics.jsonl", "a")  # noqa: SIM115 - kept open for the whole loop
        stopped_by, loss_value = "steps", float("nan")
        last_step = step_cap(train.max_steps, train.max_tflops, self.flops_per_step)
        window_start, window_images, window_loss = time.perf_counter(), 0, 0.0
        self.model.train()
        try:
            with (
                stop_signals() as stop_requested,
                progress_bar(
                    "diffusion train",
                    total=None if last_step == math.inf else int(last_step),
                    enabled=self.show_progress,
                    budget_s=budget,
                    clock=lambda: self.elapsed,
                ) as advance,
            ):
                advance(self.step)
                while self.step < last_step:
                    if self.elapsed >= budget:
                        stopped_by = "time"
                        break
                    if stop_requested():
                        stopped_by = "interrupt"
                        break
                    started = time.perf_counter()
                    indices = torch.randint(
                        0, len(self.images), (train.batch_size,), generator=self.generator
                    )
                    loss = self.train_step(indices)
                    loss_value = float(loss)
                    self.step += 1
                    self.images_seen += train.batch_size * self.accelerator.num_processes
                    self.elapsed += time.perf_counter() - started
                    window_images += train.batch_size
                    window_loss += loss_value
                    if self.step % train.log_every == 0:
                        seconds = time.perf_counter() - window_start
                        record = {
                            "step": self.step,
                            "loss": window_loss / train.log_every,
                            "lr": self.lr_schedule.get_last_lr()[0],
                            "images_per_s": window_images / seconds,
                            "elapsed_min": self.elapsed / 60,
                            "images_seen": self.images_seen,
                        }
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                        advance(0, loss=record["loss"], img_s=record["images_per_s"])
                        window_start, window_images, window_loss = time.perf_counter(), 0, 0.0
                    if self.step % train.checkpoint_every == 0:
                        self.save()
                    if train.sample_every and self.step % train.sample_every == 0:
                        self.ema.copy_to(self.ema_model.parameters())
                        save_grid(
                            sample_images(self.ema_model, self.noise, n=16, steps=25),
                            self.out / "samples" / f"step_{self.step:07d}.png",
                        )
                    advance(1)
        except KeyboardInterrupt:
            stopped_by = "interrupt"
        finally:
            log.close()
        if stopped_by == "steps" and self.step < train.max_steps:
            stopped_by = "flops"  # the FLOP budget ended the run before the step cap
        if stopped_by != "steps" or self.step % train.checkpoint_every:
            self.save()
        return TrainResult(
            self.out,
            self.step,
            self.elapsed / 60,
            self.images_seen,
            loss_value,
            stopped_by,
            flops=float(self.flops_per_step * self.step),
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
