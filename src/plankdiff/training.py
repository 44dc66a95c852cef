"""The one training loop of the project, shared by the DDPM and every baseline method.

The network, its objective and the loop are kept apart (as in lucidrains' denoising-diffusion-pytorch):
a subclass of `Trainer` supplies only what differs between methods, namely its network and optimiser
(built in its constructor), `loss(indices)` for one batch, what goes into a checkpoint and what its run
record says. Everything else is done here, once, for every method alike:

- budgets: a step cap, a FLOP cap (`plankdiff.budget`) and a time budget summed over resumes, and the
  reason the run stopped (`StopReason`);
- random batches drawn with replacement from the trainer's seeded generator;
- precision: bf16 autocast around the forward pass and the loss, float32 master weights and optimiser
  state (`plankdiff.precision` decides where bf16 pays);
- checkpoints every `checkpoint_every` steps and at the end (`plankdiff.diffusion.checkpoint`: atomic,
  safetensors), exact resume from the newest readable checkpoint, `metrics.jsonl` cut back to it;
- SIGTERM/SIGINT end the run after the current step with a checkpoint (the CLI then exits 143/130);
- a diverged loss stops the run, naming the checkpoint to resume from;
- progress lines and the lineage of the training rows (`plankdiff.data.lineage`).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch

from plankdiff.budget import TERA, step_cap
from plankdiff.choices import Precision
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
from plankdiff.precision import autocast, resolve_precision
from plankdiff.progress import progress_bar
from plankdiff.provenance import read_json, write_json

# Settings that change how a run reports and checkpoints, not what it learns.
REPORTING_FIELDS = ("log_every", "sample_every", "checkpoint_every", "keep_checkpoints")
# Settings that may change when a run is resumed: how long it runs, how it reports and the arithmetic
# precision (a run may resume on other hardware), not what it learns. `precision` is also absent
# from runs recorded before it existed.
RUN_LENGTH_FIELDS = ("precision", "max_steps", "max_minutes", "max_tflops", *REPORTING_FIELDS)


class StopReason(StrEnum):
    """Why a training run ended (a str, so records and older code compare it as text)."""

    STEPS = "steps"  # the step cap
    FLOPS = "flops"  # the FLOP budget, before the step cap
    TIME = "time"  # the time budget
    INTERRUPT = "interrupt"  # SIGTERM, SIGINT or Ctrl-C: resumable


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the newest checkpoint on disk is the last good state."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    elapsed_minutes: float
    images_seen: int
    last_loss: float
    stopped_by: str  # a StopReason
    flops: float = 0.0  # training FLOPs (matrix products and convolutions, forward and backward)
    precision: str = "fp32"  # the precision the run trained in (fp32 or bf16)


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


@dataclass(frozen=True, kw_only=True)
class LoopSettings:
    """The settings of the loop itself, which every method's config carries under the same names."""

    batch_size: int
    max_steps: int | None
    max_minutes: float | None
    max_tflops: float | None
    log_every: int
    checkpoint_every: int
    keep_checkpoints: int
    grad_clip: float
    precision: Precision

    @classmethod
    def of(cls, config) -> LoopSettings:
        """The loop settings of a method's (pydantic) training config."""
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})


class Trainer(ABC):
    """The loop. A subclass sets, in its constructor and before `_start_loop`: `self.optimizer`,
    `self.images` (the uint8 training images, indexed by `loss`), and implements the hooks below."""

    description: str = "train"  # the progress line's label
    record_file: str  # the run record (JSON) in the run folder, checked on resume

    def _start_loop(
        self,
        *,
        out: Path | str,
        dataset: PreparedDataset,
        rows: np.ndarray,
        settings: LoopSettings,
        device: torch.device,
        seed: int,
        resume: bool,
        show_progress: bool,
    ) -> None:
        self.out, self.dataset, self.rows = Path(out), dataset, rows
        self.settings, self.device = settings, device
        self.resume, self.show_progress = resume, show_progress
        self.precision = resolve_precision(settings.precision, device)
        self.generator = torch.Generator().manual_seed(seed)
        self.step, self.elapsed, self.images_seen = 0, 0.0, 0
        self.stopped_by = ""
        self.flops_per_step = self._count_step_flops()

    # -- what a method supplies -----------------------------------------------------------------
    @abstractmethod
    def loss(self, indices: torch.Tensor) -> torch.Tensor:
        """The scalar loss of one batch, `indices` into `self.images` (run under autocast)."""

    @abstractmethod
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the optimiser updates (their gradients are clipped together)."""

    @abstractmethod
    def _count_step_flops(self) -> int:
        """Forward and backward FLOPs of one step, counted without touching the run's state."""

    @abstractmethod
    def _checkpoint(self) -> tuple[dict, dict, dict]:
        """(model weights, EMA weights, method state beyond the loop's) for a checkpoint."""

    @abstractmethod
    def _load(self, weights: dict, ema: dict, state: dict) -> None:
        """Put a checkpoint's contents (as `_checkpoint` made them) back into the method."""

    @abstractmethod
    def _record(self) -> dict:
        """The run record written to `record_file`."""

    @abstractmethod
    def _check_resumable(self, saved: dict) -> None:
        """Raise ValueError when the saved run record describes another run than this one."""

    def _before_step(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Before the forward pass (e.g. set the learning rate)."""

    def _after_step(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """After the optimiser step (e.g. the LR schedule and EMA)."""

    def _after_save(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """After a checkpoint is written (e.g. export the EMA network)."""

    def _on_start(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Once the run folder is set up, before the first step."""

    def _after_log(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """After each step's bookkeeping (e.g. sample grids)."""

    def _backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def _clip_gradients(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), self.settings.grad_clip)

    @property
    def _processes(self) -> int:
        return 1

    @property
    def _is_main_process(self) -> bool:
        return True

    # -- shared ---------------------------------------------------------------------------------
    @property
    def progress(self) -> float | None:
        """The fraction of the time or FLOP budget spent (the larger), or None without either."""
        settings, spent = self.settings, []
        if settings.max_minutes:
            spent.append(self.elapsed / (60 * settings.max_minutes))
        if settings.max_tflops:
            spent.append(self.flops_per_step * self.step / (settings.max_tflops * TERA))
        return min(1.0, max(spent)) if spent else None

    def _write_record(self) -> None:
        if self._is_main_process:
            write_json(self.out / self.record_file, self._record())

    def _loop_record(self) -> dict:
        """The loop's part of the run record: how far it got and how."""
        return {
            "precision": self.precision,
            "step": self.step,
            "images_seen": self.images_seen,
            "flops_per_step": self.flops_per_step,
            "flops": self.flops_per_step * self.step,
            "elapsed_minutes": self.elapsed / 60,
            "stopped_by": self.stopped_by,
        }

    def save(self) -> Path:
        if not self._is_main_process:
            return self.out
        weights, ema, extra = self._checkpoint()
        state = loop_state(
            step=self.step, elapsed=self.elapsed, images_seen=self.images_seen, generator=self.generator
        )
        path = save_checkpoint(
            self.out / "checkpoints",
            self.step,
            model=weights,
            ema=ema,
            state=state | extra,
            keep=self.settings.keep_checkpoints,
        )
        self._after_save()
        self._write_record()
        return path

    def _restore(self, loaded: tuple[dict, dict, dict]) -> None:
        weights, ema, state = loaded
        self._load(weights, ema, state)
        self.step, self.elapsed, self.images_seen = restore_loop_state(state, self.generator)

    def train_step(self, indices: torch.Tensor) -> torch.Tensor:
        """One optimiser step on the training images at `indices`."""
        self._before_step()
        with autocast(self.device, self.precision):
            loss = self.loss(indices)
        loss = loss.float()
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss.item()} at step {self.step + 1}; stopped. The newest checkpoint in "
                f"{self.out / 'checkpoints'} is the last good state: lower the learning rate and --resume"
            )
        self._backward(loss)
        self._clip_gradients()
        self.optimizer.step()
        self._after_step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def _prepare_run_folder(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        if latest_checkpoint(self.out / "checkpoints") is not None and not self.resume:
            raise FileExistsError(
                f"{self.out}: holds a run already; pass --resume to continue it or pick another --out"
            )
        found = resume_point(self.out / "checkpoints") if self.resume else None
        if found is not None:
            self._check_resumable(read_json(self.out / self.record_file))
            self._restore(found[1])
        truncate_log(self.out / "metrics.jsonl", self.step)  # a kill before any checkpoint: from 0
        self.stopped_by = "running"
        if self._is_main_process:
            self._write_record()
            write_training_images(self.out, self.dataset, self.rows)
            self._on_start()

    def train(self) -> TrainResult:
        settings = self.settings
        self._prepare_run_folder()
        budget = settings.max_minutes * 60 if settings.max_minutes else math.inf
        last_step = step_cap(settings.max_steps, settings.max_tflops, self.flops_per_step)
        log = open(self.out / "metrics.jsonl", "a")  # noqa: SIM115 - kept open for the whole loop
        stopped_by, loss_value = StopReason.STEPS, float("nan")
        window_start, window_images, window_loss, window_steps = time.perf_counter(), 0, 0.0, 0
        self._set_train_mode()
        try:
            with (
                stop_signals() as stop_requested,
                progress_bar(
                    self.description,
                    total=None if last_step == math.inf else int(last_step),
                    enabled=self.show_progress,
                    budget_s=budget,
                    clock=lambda: self.elapsed,
                ) as advance,
            ):
                advance(self.step)
                while self.step < last_step:
                    if self.elapsed >= budget:
                        stopped_by = StopReason.TIME
                        break
                    if stop_requested():
                        stopped_by = StopReason.INTERRUPT
                        break
                    started = time.perf_counter()
                    indices = torch.randint(
                        0, len(self.images), (settings.batch_size,), generator=self.generator
                    )
                    loss_value = float(self.train_step(indices))
                    self.step += 1
                    self.images_seen += settings.batch_size * self._processes
                    self.elapsed += time.perf_counter() - started
                    window_images += settings.batch_size
                    window_loss += loss_value
                    window_steps += 1
                    if self.step % settings.log_every == 0:
                        record = {
                            "step": self.step,
                            "loss": window_loss / window_steps,
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "images_per_s": window_images / (time.perf_counter() - window_start),
                            "elapsed_min": self.elapsed / 60,
                            "images_seen": self.images_seen,
                        }
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                        advance(
                            0, loss=record["loss"], img_s=record["images_per_s"], min=record["elapsed_min"]
                        )
                        window_start, window_images, window_loss, window_steps = (
                            time.perf_counter(),
                            0,
                            0.0,
                            0,
                        )
                    if self.step % settings.checkpoint_every == 0:
                        self.save()
                    self._after_log()
                    advance(1)
        except KeyboardInterrupt:
            stopped_by = StopReason.INTERRUPT
        finally:
            log.close()
        if stopped_by == StopReason.STEPS and self.step < (settings.max_steps or math.inf):
            stopped_by = StopReason.FLOPS  # the FLOP budget ended the run before the step cap
        self.stopped_by = stopped_by
        if stopped_by != StopReason.STEPS or self.step % settings.checkpoint_every:
            self.save()
        else:  # the loop saved this step's checkpoint already: only record how the run ended
            self._write_record()
        return TrainResult(
            self.out,
            self.step,
            self.elapsed / 60,
            self.images_seen,
            loss_value,
            stopped_by,
            flops=float(self.flops_per_step * self.step),
            precision=self.precision,
        )

    def _set_train_mode(self) -> None:
        for module in self._modules_to_train():
            module.train()

    @abstractmethod
    def _modules_to_train(self) -> list[torch.nn.Module]:
        """The modules switched to training mode when the loop starts."""


__all__ = ["LoopSettings", "StopReason", "TrainResult", "Trainer", "TrainingDiverged", "stop_signals"]
