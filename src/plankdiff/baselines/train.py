"""One trainer for every baseline method, under the same rules as the DDPM trainer: the same
training rows (a split's train rows), a time budget summed over resumes, random batches drawn with
replacement from a seeded generator, atomic safetensors checkpoints (`plankdiff.diffusion.checkpoint`)
and exact resume, `metrics.jsonl`, and a `baseline.json` that records what was trained on what.

Run folder:
    baseline.json           method, config, dataset key, training rows, parameters, budget, progress, git SHA
    metrics.jsonl           step, loss, lr, images/s, elapsed minutes, images seen
    checkpoints/step_…/     model.safetensors (the method's whole state_dict: backbone, heads, momentum
                            copies, loss buffers), ema.safetensors (empty: the methods that keep a
                            momentum network hold it in their state_dict), state.pt

Schedule: AdamW (weight decay on weights only, via lightly's `get_weight_decay_parameters`), linear
warm-up over `warmup_steps`, then cosine to 0 over the time budget: the learning rate follows the
fraction of the budget spent, so a run that stops on time ends at lr 0 whatever its throughput.
Without a budget the rate stays constant after warm-up (and a run is then bitwise reproducible).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightly.models.utils import get_weight_decay_parameters
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from plankdiff.baselines.registry import Method, get_method
from plankdiff.budget import TERA, count_flops, step_cap
from plankdiff.data.lineage import pretraining_rows, write_training_images
from plankdiff.data.prepare import PreparedDataset
from plankdiff.data.splits import Split
from plankdiff.diffusion.checkpoint import (
    latest_checkpoint,
    loop_state,
    restore_loop_state,
    resume_point,
    save_checkpoint,
    truncate_log,
)
from plankdiff.diffusion.train import TrainingDiverged, TrainResult, stop_signals
from plankdiff.progress import progress_bar
from plankdiff.provenance import git_sha, read_json, sha256_json, write_json
from plankdiff.validation import problems

BASELINE_FILE = "baseline.json"
# Fields that may change when a run is resumed: how long it runs and how it reports, not what it learns.
RUN_LENGTH_FIELDS = (
    "max_steps",
    "max_minutes",
    "max_tflops",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
)


class BaselineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str
    width: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    batch_size: int = Field(128, ge=2)  # contrastive losses need at least one other image
    warmup_steps: int = Field(25, ge=0)  # ~5 % of a 20-minute CPU run of the supervised ResNet-18
    grad_clip: float = Field(3.0, gt=0)  # DINO's; a guard against spikes for the others
    max_steps: int | None = Field(None, ge=1)
    max_minutes: float | None = Field(None, gt=0)
    max_tflops: float | None = Field(None, gt=0)  # training FLOPs budget, in units of 1e12
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    seed: int = 0

    @field_validator("method")
    @classmethod
    def _known(cls, name: str) -> str:
        get_method(name)  # a ValueError naming the known methods
        return name

    @model_validator(mode="after")
    def _bounded(self) -> BaselineConfig:
        if not (self.max_steps or self.max_minutes or self.max_tflops):
            raise ValueError(
                "give a budget: max_minutes (--max-minutes), max_steps (--max-steps) or max_tflops"
            )
        return self

    @classmethod
    def for_method(cls, method: str, **overrides) -> BaselineConfig:
        """The method's recipe (width, lr, weight decay) with `overrides` that are not None on top."""
        recipe = get_method(method)
        defaults = {"width": recipe.default_width, "lr": recipe.lr, "weight_decay": recipe.weight_decay}
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(method=method, **defaults | given)
        except ValidationError as error:
            raise ValueError(
                problems(error, source=f"baseline {method}", what="settings", flags=given)
            ) from None


@dataclass(frozen=True)
class TrainingRows:
    """The dataset rows a baseline trains on; labels (and their class names) only for methods that use them."""

    rows: np.ndarray
    labels: np.ndarray | None = None
    classes: list[str] | None = None
    split: str | None = None


def training_rows(
    dataset: PreparedDataset, *, method: str, split: str | None, all_rows: bool = False
) -> TrainingRows:
    """The train rows of `split`, as the DDPM sees them (every row only with `all_rows`, for a
    self-supervised method); labels only for a method that `uses_labels`, which must have a split,
    so that val and test rows stay unseen."""
    uses_labels = get_method(method).uses_labels
    if uses_labels and not split:
        raise ValueError(
            f"{method} trains on labels: give --split, so that its val and test rows stay unseen"
        )
    rows = pretraining_rows(dataset, split, all_rows=all_rows)
    if not split:
        return TrainingRows(rows=rows)
    chosen = Split.load(dataset, split)
    held_out = np.concatenate([chosen.indices("val"), chosen.indices("test")])
    if np.isin(rows, held_out).any():
        raise ValueError(f"split {split}: train rows overlap val/test rows")
    if not uses_labels:
        return TrainingRows(rows=rows, split=split)
    return TrainingRows(rows=rows, labels=chosen.labels("train"), classes=chosen.classes, split=split)


class BaselineTrainer:
    """Trains `config.method` on the `data.rows` of `dataset` into the run folder `out`; `train()`
    runs until `max_steps` or the time budget, whichever comes first, and can be resumed."""

    def __init__(
        self,
        *,
        config: BaselineConfig,
        dataset: PreparedDataset,
        data: TrainingRows,
        out: Path | str,
        resume: bool = False,
        show_progress: bool = True,
    ):
        self.config, self.dataset, self.out = config, dataset, Path(out)
        self.resume, self.show_progress = resume, show_progress
        recipe = get_method(config.method)
        order = np.argsort(data.rows, kind="stable")
        self.rows = np.asarray(data.rows)[order]
        if len(self.rows) <= 1:
            raise ValueError(f"{dataset.root}: fewer than 2 images selected for training")
        if recipe.uses_labels:
            if not (data.labels is not None and len(data.labels) == len(data.rows) and data.classes):
                raise ValueError(f"{config.method} needs one label per training row and the class names")
            self.labels = torch.from_numpy(np.asarray(data.labels, dtype=np.int64)[order])
            if self.labels.min() < 0:
                raise ValueError(f"{config.method}: some training rows have no label (-1)")
        else:
            if data.labels is not None:
                raise ValueError(f"{config.method} is self-supervised: it must not be given labels")
            self.labels = None
        self.data = data
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        channels, size = dataset.images.shape[1], dataset.images.shape[2]
        torch.manual_seed(config.seed)  # the initial weights and MAE's masks come from the global RNG
        self.method: Method = recipe.build(
            channels=channels,
            size=size,
            width=config.width,
            n_classes=len(data.classes) if data.classes else None,
        ).to(self.device)
        decay, no_decay = get_weight_decay_parameters([self.method])
        groups = [
            {"params": [p for p in decay if p.requires_grad], "weight_decay": config.weight_decay},
            {"params": [p for p in no_decay if p.requires_grad], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=recipe.betas, fused=True)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.images = torch.from_numpy(np.ascontiguousarray(dataset.images[self.rows]))
        self.step, self.elapsed, self.images_seen = 0, 0.0, 0
        self.stopped_by = ""
        self.flops_per_step = self._count_step_flops()

    def _count_step_flops(self) -> int:
        """Forward and backward FLOPs of one training step (every network the method runs: views,
        teacher, heads). Counted on the method itself, whose state (weights, momentum teacher,
        buffers), gradients and random streams are put back afterwards: DINO's weight-normalised
        head cannot be deep-copied."""
        size = self.config.batch_size
        positions = torch.arange(size) % len(self.images)
        pixels = self.images[positions].to(self.device)
        labels = self.labels[positions].to(self.device) if self.labels is not None else None
        saved = {k: v.detach().clone() for k, v in self.method.state_dict().items()}
        try:
            with torch.random.fork_rng(devices=[]):
                generator = torch.Generator().manual_seed(0)
                return count_flops(
                    lambda: self.method.training_step(
                        pixels, generator, labels=labels, progress=0.0
                    ).backward()
                )
        finally:
            self.method.load_state_dict(saved)
            self.method.zero_grad(set_to_none=True)

    # -- bookkeeping ----------------------------------------------------------------------------
    def _run_info(self) -> dict:
        return {
            "method": self.config.method,
            "config": self.config.model_dump(mode="json"),
            "dataset": {"name": self.dataset.name, "root": str(self.dataset.root), "key": self.dataset.key},
            "split": self.data.split,
            "training_rows": len(self.rows),
            "training_rows_hash": sha256_json(self.rows.tolist()),
            "classes": self.data.classes,
            "image_shape": list(self.images.shape[1:]),
            "parameters": self.method.parameter_counts(),
            "views": self.method.views.describe(),
            "budget_minutes": self.config.max_minutes,
            "budget_tflops": self.config.max_tflops,
            "step": self.step,
            "images_seen": self.images_seen,
            "flops_per_step": self.flops_per_step,
            "flops": self.flops_per_step * self.step,
            "elapsed_minutes": self.elapsed / 60,
            "stopped_by": self.stopped_by,
            "git_sha": git_sha(),
        }

    def _check_resumable(self, saved: dict) -> None:
        current = self._run_info()
        for key in ("method", "dataset", "split", "training_rows_hash", "classes", "image_shape"):
            if saved.get(key) != current[key]:
                raise ValueError(
                    f"{self.out / BASELINE_FILE}: cannot resume, {key} differs (saved {saved.get(key)}, now {current[key]})"
                )
        mine = {k: v for k, v in current["config"].items() if k not in RUN_LENGTH_FIELDS}
        theirs = {k: v for k, v in saved["config"].items() if k not in RUN_LENGTH_FIELDS}
        if mine != theirs:
            changed = sorted(k for k in mine if mine[k] != theirs.get(k))
            raise ValueError(
                f"{self.out / BASELINE_FILE}: cannot resume, the recipe differs ({', '.join(changed)})"
            )

    def _state(self) -> dict:
        return loop_state(
            step=self.step, elapsed=self.elapsed, images_seen=self.images_seen, generator=self.generator
        ) | {"optimizer": self.optimizer.state_dict()}

    def save(self) -> Path:
        path = save_checkpoint(
            self.out / "checkpoints",
            self.step,
            model=self.method.state_dict(),
            ema={},
            state=self._state(),
            keep=self.config.keep_checkpoints,
        )
        write_json(self.out / BASELINE_FILE, self._run_info())
        return path

    def _restore(self, loaded: tuple[dict, dict, dict]) -> None:
        weights, _, state = loaded
        self.method.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.elapsed, self.images_seen = restore_loop_state(state, self.generator)

    # -- the loop -------------------------------------------------------------------------------
    @property
    def progress(self) -> float | None:
        """The fraction of the time or FLOP budget spent (the larger), or None without either."""
        spent = []
        if self.config.max_minutes:
            spent.append(self.elapsed / (60 * self.config.max_minutes))
        if self.config.max_tflops:
            spent.append(self.flops_per_step * self.step / (self.config.max_tflops * TERA))
        return min(1.0, max(spent)) if spent else None

    def learning_rate(self) -> float:
        config = self.config
        warm = min(1.0, (self.step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        decay = 1.0 if self.progress is None else 0.5 * (1 + math.cos(math.pi * self.progress))
        return config.lr * warm * decay

    def train_step(self, positions: torch.Tensor) -> torch.Tensor:
        """One optimiser step on the training images at `positions` (indices into `self.rows`)."""
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        pixels = self.images[positions].to(self.device)
        labels = self.labels[positions].to(self.device) if self.labels is not None else None
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        with autocast:
            loss = self.method.training_step(pixels, self.generator, labels=labels, progress=self.progress)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss.item()} at step {self.step + 1}; stopped. The newest checkpoint in "
                f"{self.out / 'checkpoints'} is the last good state: lower the learning rate and --resume"
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            [p for p in self.method.parameters() if p.requires_grad], self.config.grad_clip
        )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def train(self) -> TrainResult:
        config = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        checkpoint = latest_checkpoint(self.out / "checkpoints")
        if checkpoint is not None and not self.resume:
            raise FileExistsError(
                f"{self.out}: holds a run already; pass --resume to continue it or pick another --out"
            )
        found = resume_point(self.out / "checkpoints") if self.resume else None
        if found is not None:
            self._check_resumable(read_json(self.out / BASELINE_FILE))
            self._restore(found[1])
        truncate_log(self.out / "metrics.jsonl", self.step)  # a kill before any checkpoint: from 0
        self.stopped_by = "running"
        write_json(self.out / BASELINE_FILE, self._run_info())
        write_training_images(self.out, self.dataset, self.rows)
        budget = config.max_minutes * 60 if config.max_minutes else math.inf
        max_steps = step_cap(config.max_steps, config.max_tflops, self.flops_per_step)
        log = open(self.out / "metrics.jsonl", "a")  # noqa: SIM115 - kept open for the whole loop
        stopped_by, loss_value = "steps", float("nan")
        window_start, window_images = time.perf_counter(), 0
        window_loss, window_steps = 0.0, 0
        self.method.train()
        description = f"{config.method} train"
        try:
            with (
                stop_signals() as stop_requested,
                progress_bar(
                    description,
                    total=None if max_steps == math.inf else int(max_steps),
                    enabled=self.show_progress,
                    budget_s=budget,
                    clock=lambda: self.elapsed,
                ) as advance,
            ):
                advance(self.step)
                while self.step < max_steps:
                    if self.elapsed >= budget:
                        stopped_by = "time"
                        break
                    if stop_requested():
                        stopped_by = "interrupt"
                        break
                    started = time.perf_counter()
                    positions = torch.randint(
                        0, len(self.images), (config.batch_size,), generator=self.generator
                    )
                    loss_value = float(self.train_step(positions))
                    self.step += 1
                    self.images_seen += config.batch_size
                    self.elapsed += time.perf_counter() - started
                    window_images += config.batch_size
                    window_loss += loss_value
                    window_steps += 1
                    if self.step % config.log_every == 0:
                        seconds = time.perf_counter() - window_start
                        record = {
                            "step": self.step,
                            "loss": window_loss / window_steps,
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "images_per_s": window_images / seconds,
                            "elapsed_min": self.elapsed / 60,
                            "images_seen": self.images_seen,
                        }
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                        advance(
                            0, loss=record["loss"], img_s=record["images_per_s"], min=record["elapsed_min"]
                        )
                        window_start, window_images = time.perf_counter(), 0
                        window_loss, window_steps = 0.0, 0
                    if self.step % config.checkpoint_every == 0:
                        self.save()
                    advance(1)
        except KeyboardInterrupt:
            stopped_by = "interrupt"
        finally:
            log.close()
        if stopped_by == "steps" and self.step < (config.max_steps or math.inf):
            stopped_by = "flops"  # the FLOP budget ended the run before the step cap
        self.stopped_by = stopped_by
        if stopped_by != "steps" or self.step % config.checkpoint_every:
            self.save()
        else:  # the loop saved this step's checkpoint already: only record how the run ended
            write_json(self.out / BASELINE_FILE, self._run_info())
        return TrainResult(
            self.out,
            self.step,
            self.elapsed / 60,
            self.images_seen,
            loss_value,
            stopped_by,
            flops=float(self.flops_per_step * self.step),
        )
