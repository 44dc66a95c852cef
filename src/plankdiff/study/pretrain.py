"""The study's pre-training stages: what a backbone's stage key hashes, and the DDPM and baseline
trainings it runs (resumed from their checkpoints), each returning the record the budget table reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from plankdiff.baselines.train import BaselineConfig, BaselineTrainer, training_rows
from plankdiff.data.splits import Split
from plankdiff.diffusion.config import load_config
from plankdiff.diffusion.model import load_backbone
from plankdiff.diffusion.train import DiffusionTrainer, sample_images, save_grid
from plankdiff.provenance import read_json, sha256_json
from plankdiff.study.config import ExperimentConfig


class StudyInterrupted(Exception):
    """A training stage stopped on a signal: it is not recorded as done, so a rerun resumes it."""


def pretrain_inputs(config: ExperimentConfig, dataset_key: str, rows, seed: int, precision: str) -> dict:
    """What a pre-training stage's key hashes (the baselines add their method and budget)."""
    return {
        "dataset": dataset_key,
        "rows": sha256_json(np.asarray(rows).tolist()),
        "seed": seed,
        **config.diffusion.identity(),
        # Every backbone trained before bf16 training existed was fp32: its key stays as it was.
        **({"precision": precision} if precision != "fp32" else {}),
    }


def training_precision(config: ExperimentConfig) -> str:
    """What the study's `training_precision` resolves to on the device the backbones train on."""
    import torch

    from plankdiff.precision import resolve_precision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return resolve_precision(config.training_precision, device)


def train_diffusion(config: ExperimentConfig, dataset, split: Split, folder: Path, seed: int) -> dict:
    spec = config.diffusion
    trainer_config = load_config(
        spec.preset, **spec.train_overrides(), seed=seed, precision=training_precision(config)
    )
    trainer = DiffusionTrainer(
        config=trainer_config, dataset=dataset, out=folder, rows=split.indices("train"), resume=True
    )
    result = trainer.train()
    _refuse_interrupted(result, folder)
    unet, scheduler = load_backbone(folder)
    if spec.samples:
        save_grid(sample_images(unet, scheduler, n=spec.samples, steps=25), folder / "samples" / "final.png")
    return _run_record(result, parameters=sum(p.numel() for p in unet.parameters())) | {
        "last_loss": result.last_loss
    }


def train_baseline(
    config: ExperimentConfig, dataset, split: Split, folder: Path, method: str, seed: int
) -> dict:
    budget = config.baselines
    baseline_config = BaselineConfig.for_method(
        method,
        max_minutes=budget.max_minutes,
        max_tflops=budget.max_tflops,
        batch_size=budget.batch_size,
        seed=seed,
        precision=training_precision(config),
    )
    rows = training_rows(dataset, method=method, split=split.name)
    trainer = BaselineTrainer(config=baseline_config, dataset=dataset, data=rows, out=folder, resume=True)
    result = trainer.train()
    _refuse_interrupted(result, folder)
    info = read_json(folder / "baseline.json")
    return _run_record(result, parameters=_trained_parameters(info.get("parameters")))


def _run_record(result, *, parameters: int | None) -> dict:
    """What a pre-training stage records of any backbone's run (`plankdiff.training.TrainResult`)."""
    return {
        "minutes": result.elapsed_minutes,
        "images_seen": result.images_seen,
        "steps": result.step,
        "tflops": result.flops / 1e12,
        "stopped_by": result.stopped_by,
        "precision": result.precision,
        "parameters": parameters,
    }


def _refuse_interrupted(result, folder: Path) -> None:
    if result.stopped_by == "interrupt":
        raise StudyInterrupted(
            f"{folder}: training was interrupted at step {result.step} and saved a checkpoint; "
            "rerun the same command to resume it"
        )


def _trained_parameters(counts) -> int | None:
    """Baselines record {backbone, trainable, total}; the budget table compares what each method trains."""
    return counts.get("trainable") if isinstance(counts, dict) else counts


__all__ = ["StudyInterrupted", "pretrain_inputs", "train_baseline", "train_diffusion", "training_precision"]
