"""Every baseline method's trainer, on the training loop the DDPM uses too (`plankdiff.training`:
budgets, batches, precision, checkpoints and exact resume, `metrics.jsonl`, stop signals): the same
training rows (a split's train rows), and a `baseline.json` that records what was trained on what.

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

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightly.models.utils import get_weight_decay_parameters
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from plankdiff.baselines.registry import Method, get_method
from plankdiff.budget import count_flops
from plankdiff.choices import Precision
from plankdiff.data.lineage import pretraining_rows
from plankdiff.data.prepare import PreparedDataset
from plankdiff.data.splits import Split
from plankdiff.devices import default_device
from plankdiff.provenance import changed_fields, git_sha, sha256_json
from plankdiff.training import RUN_LENGTH_FIELDS, LoopSettings, Trainer
from plankdiff.validation import problems

BASELINE_FILE = "baseline.json"


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
    # auto: bf16 autocast where the device has bf16 units (plankdiff.precision), else fp32.
    precision: Precision = "auto"

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


class BaselineTrainer(Trainer):
    """A baseline method's part of the training loop (`plankdiff.training.Trainer`): the method
    (network, heads and loss, from the registry), AdamW with its betas and weight decay, and the
    warm-up-then-cosine learning rate. `train()` runs until `max_steps` or a budget, whichever comes
    first, and can be resumed."""

    record_file = BASELINE_FILE

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
        self.config = config
        self.description = f"{config.method} train"
        recipe = get_method(config.method)
        order = np.argsort(data.rows, kind="stable")
        rows = np.asarray(data.rows)[order]
        if len(rows) <= 1:
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
        device = default_device()
        channels, size = dataset.images.shape[1], dataset.images.shape[2]
        torch.manual_seed(config.seed)  # the initial weights and MAE's masks come from the global RNG
        self.method: Method = recipe.build(
            channels=channels,
            size=size,
            width=config.width,
            n_classes=len(data.classes) if data.classes else None,
        ).to(device)
        decay, no_decay = get_weight_decay_parameters([self.method])
        groups = [
            {"params": [p for p in decay if p.requires_grad], "weight_decay": config.weight_decay},
            {"params": [p for p in no_decay if p.requires_grad], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=recipe.betas, fused=True)
        self.images = torch.from_numpy(np.ascontiguousarray(dataset.images[rows]))
        self._start_loop(
            out=out,
            dataset=dataset,
            rows=rows,
            settings=LoopSettings.of(config),
            device=device,
            seed=config.seed,
            resume=resume,
            show_progress=show_progress,
        )

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
        }

    def _record(self) -> dict:
        return self._run_info() | self._loop_record() | {"git_sha": git_sha()}

    def _check_resumable(self, saved: dict) -> None:
        current = self._run_info()
        for key in ("method", "dataset", "split", "training_rows_hash", "classes", "image_shape"):
            if saved.get(key) != current[key]:
                raise ValueError(
                    f"{self.out / BASELINE_FILE}: cannot resume, {key} differs (saved {saved.get(key)}, now {current[key]})"
                )
        changed = changed_fields(saved["config"], current["config"], ignore=RUN_LENGTH_FIELDS)
        if changed:
            raise ValueError(
                f"{self.out / BASELINE_FILE}: cannot resume, the recipe differs ({'; '.join(changed)})"
            )

    def _checkpoint(self) -> tuple[dict, dict, dict]:
        # No EMA file content: the methods that keep a momentum network hold it in their state_dict.
        return self.method.state_dict(), {}, {"optimizer": self.optimizer.state_dict()}

    def _load(self, weights: dict, ema: dict, state: dict) -> None:
        self.method.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])

    def _modules_to_train(self) -> list[torch.nn.Module]:
        return [self.method]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.method.parameters() if p.requires_grad]

    # -- the objective --------------------------------------------------------------------------
    def learning_rate(self) -> float:
        config = self.config
        warm = min(1.0, (self.step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        decay = 1.0 if self.progress is None else 0.5 * (1 + math.cos(math.pi * self.progress))
        return config.lr * warm * decay

    def _before_step(self) -> None:
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def loss(self, indices: torch.Tensor) -> torch.Tensor:
        """The method's own loss on the training images at `indices` (positions in `self.rows`)."""
        pixels = self.images[indices].to(self.device)
        labels = self.labels[indices].to(self.device) if self.labels is not None else None
        return self.method.training_step(pixels, self.generator, labels=labels, progress=self.progress)
