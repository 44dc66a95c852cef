"""The study's pre-training stages: what a backbone's stage key hashes, the DDPM and baseline
trainings it runs (resumed from their checkpoints), each returning the record the budget table reads,
and the check that a cached backbone was trained with the settings its stage would train now.

Why that check: a DDPM's key hashes its preset's *name* (and a baseline's its method's name), not
the settings the name resolves to, and the keys of cached studies cannot change. An edited preset
file (or a method's recipe, which lives in code) would otherwise reuse every backbone trained with
the old settings and report it as trained with the new ones. Each run folder already records what
it trained with (`config.json`, `baseline.json`), so a reused stage is compared with it and refused,
naming the differing fields. Refused, not re-run: the same key means the same folder, whose
checkpoints a re-run would resume (or, deleted automatically, take a cached backbone away without
anyone deciding to)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from plankdiff.baselines.registry import get_method
from plankdiff.baselines.train import BASELINE_FILE, BaselineConfig, BaselineTrainer, training_rows
from plankdiff.data.splits import Split
from plankdiff.diffusion.config import DiffusionConfig, load_config
from plankdiff.diffusion.model import load_backbone
from plankdiff.diffusion.train import DiffusionTrainer, sample_images, save_grid, settings_changes
from plankdiff.provenance import changed_fields, read_json, sha256_json
from plankdiff.study.config import ExperimentConfig
from plankdiff.training import REPORTING_FIELDS

# Left out of the comparison: how a run reports and checkpoints, and its precision, which the stage
# key already holds as resolved (and runs recorded before `precision` existed name `auto`).
NOT_COMPARED = ("precision", *REPORTING_FIELDS)


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


def baseline_inputs(config: ExperimentConfig, inputs: dict, method: str) -> dict:
    """What a baseline's stage key hashes: its pre-training's `inputs`, the method and the budget.
    The options added after backbones were cached join it only where they change what trains, so
    those backbones keep their key: `batch_size` when set, `width` when not the method's own."""
    spec = config.baselines
    width = spec.width if spec.width != get_method(method).default_width else None
    return (
        inputs
        | {"method": method, "minutes": spec.max_minutes, "tflops": spec.max_tflops}
        | ({"batch_size": spec.batch_size} if spec.batch_size else {})
        | ({"width": width} if width is not None else {})
    )


def training_precision(config: ExperimentConfig) -> str:
    """What the study's `training_precision` resolves to on the device the backbones train on."""
    from plankdiff.devices import default_device
    from plankdiff.precision import resolve_precision

    return resolve_precision(config.training_precision, default_device())


def diffusion_config(config: ExperimentConfig, seed: int) -> DiffusionConfig:
    """The settings the study's DDPM of `seed` trains with: its preset as the file reads now."""
    spec = config.diffusion
    return load_config(spec.preset, **spec.train_overrides(), seed=seed, precision=training_precision(config))


def baseline_config(config: ExperimentConfig, method: str, seed: int) -> BaselineConfig:
    """The settings the study's `method` backbone of `seed` trains with: its recipe as the code gives now."""
    budget = config.baselines
    return BaselineConfig.for_method(
        method,
        max_minutes=budget.max_minutes,
        max_tflops=budget.max_tflops,
        batch_size=budget.batch_size,
        width=budget.width,
        seed=seed,
        precision=training_precision(config),
    )


def stale_diffusion(config: ExperimentConfig, folder: Path, seed: int) -> str | None:
    """Why the DDPM in `folder` is not what its stage trains now, or None (see the module's doc)."""
    record = folder / DiffusionTrainer.record_file
    if not record.is_file():
        return f"{record} is missing, so its settings cannot be checked"
    changed = settings_changes(read_json(record), diffusion_config(config, seed), ignore=NOT_COMPARED)
    return _stale(folder, f"preset {config.diffusion.preset}", changed)


def stale_baseline(
    config: ExperimentConfig, folder: Path, method: str, seed: int, *, split: Split | None = None
) -> str | None:
    """Why the `method` backbone in `folder` is not what its stage trains now, or None. `split`: the
    pre-training split the stage trains on; a backbone that records another split name is refused
    too (its feature extraction reads that split back by name: a backbone copied from another
    study trained on the same rows under another split name would not find it here)."""
    record = folder / BASELINE_FILE
    if not record.is_file():
        return f"{record} is missing, so its settings cannot be checked"
    recorded = read_json(record)
    if split is not None and recorded.get("split") not in (None, split.name):
        return f"{folder} was trained on split {recorded.get('split')}, this study's is {split.name}"
    now = baseline_config(config, method, seed).model_dump(mode="json")
    changed = changed_fields(recorded.get("config"), now, ignore=NOT_COMPARED)
    return _stale(folder, f"the {method} recipe", changed)


def _stale(folder: Path, source: str, changed: list[str]) -> str | None:
    if not changed:
        return None
    return f"{folder} was trained with other settings than {source} gives now ({'; '.join(changed)})"


def train_diffusion(config: ExperimentConfig, dataset, split: Split, folder: Path, seed: int) -> dict:
    spec = config.diffusion
    trainer = DiffusionTrainer(
        config=diffusion_config(config, seed),
        dataset=dataset,
        out=folder,
        rows=split.indices("train"),
        resume=True,
    )
    result = trainer.train()
    _refuse_interrupted(result, folder)
    unet, scheduler = load_backbone(folder, device="auto")
    if spec.samples:
        save_grid(sample_images(unet, scheduler, n=spec.samples, steps=25), folder / "samples" / "final.png")
    return _run_record(result, parameters=sum(p.numel() for p in unet.parameters())) | {
        "last_loss": result.last_loss
    }


def train_baseline(
    config: ExperimentConfig, dataset, split: Split, folder: Path, method: str, seed: int
) -> dict:
    rows = training_rows(dataset, method=method, split=split.name)
    trainer = BaselineTrainer(
        config=baseline_config(config, method, seed), dataset=dataset, data=rows, out=folder, resume=True
    )
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


__all__ = [
    "StudyInterrupted",
    "baseline_config",
    "baseline_inputs",
    "diffusion_config",
    "pretrain_inputs",
    "stale_baseline",
    "stale_diffusion",
    "train_baseline",
    "train_diffusion",
    "training_precision",
]
