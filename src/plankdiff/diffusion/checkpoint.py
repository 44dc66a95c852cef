"""Checkpoints that survive a kill at any moment and never unpickle untrusted objects.

    checkpoints/step_000250/model.safetensors   training weights
    checkpoints/step_000250/ema.safetensors     EMA weights (the ones features are read from)
    checkpoints/step_000250/state.pt            optimiser, LR schedule, EMA counters, RNG states,
                                                step and elapsed time (tensors and plain numbers
                                                only: loaded with weights_only=True)
    checkpoints/latest                          name of the newest complete checkpoint

A checkpoint is written into a temporary folder and renamed into place, then `latest` is
replaced atomically, so an interrupted write leaves the previous checkpoint as the newest.
A `latest` that names a missing or damaged folder (a copy gone wrong, a full disk) is not trusted:
resuming falls back to the newest checkpoint whose three files all load, and says which file was bad.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from plankdiff.provenance import atomic_write

LATEST = "latest"
FILES = ("model.safetensors", "ema.safetensors", "state.pt")


class CheckpointError(ValueError):
    """No checkpoint of a run can be read; the message names the damaged files."""


def save_checkpoint(
    root: Path,
    step: int,
    *,
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor],
    state: dict,
    keep: int,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    staging = root / f".staging_{step:07d}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in model.items()}, staging / "model.safetensors")
    save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, staging / "ema.safetensors")
    torch.save(state, staging / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, root / LATEST)
    # Only checkpoints older than this one rotate out: a newer (damaged) one skipped on resume is
    # left for the user to look at, never silently deleted.
    older = sorted(p for p in root.glob("step_*") if p.name < final.name)
    for stale in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _candidates(root: Path) -> list[Path]:
    """Checkpoint folders, newest first: the one `latest` names, then every `step_*` by step."""
    pointer = root / LATEST
    named = [root / pointer.read_text().strip()] if pointer.exists() else []
    steps = sorted(root.glob("step_*"), reverse=True) if root.is_dir() else []
    return list(dict.fromkeys(named + steps))


def latest_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint folder holding all its files (contents are checked by `resume_point`)."""
    for path in _candidates(root):
        if all((path / name).is_file() for name in FILES):
            return path
    return None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    loaded = []
    for name, load in zip(FILES, (load_file, load_file, _load_state), strict=True):
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing")
        try:
            loaded.append(load(file))
        except Exception as error:  # noqa: BLE001 - safetensors, pickle and zip each raise their own
            reason = " ".join(str(error).split())[:200] or type(error).__name__
            raise CheckpointError(f"{file}: unreadable ({reason})") from None
    return loaded[0], loaded[1], loaded[2]


def _load_state(file: Path) -> dict:
    return torch.load(file, weights_only=True, map_location="cpu")


def resume_point(root: Path) -> tuple[Path, tuple[dict, dict, dict]] | None:
    """The newest checkpoint that loads completely, with its contents; None when the run has none.
    Damaged ones are skipped with a warning naming the bad file; when every one is damaged the run
    stops with `CheckpointError` rather than start again from step 0 over them."""
    bad = []
    for path in _candidates(root):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as error:
            bad.append(str(error))
            warnings.warn(f"skipping checkpoint {path.name}: {error}", stacklevel=2)
    if bad:
        raise CheckpointError(f"{root}: no readable checkpoint to resume from ({'; '.join(bad)})")
    return None


def truncate_log(log: Path, step: int) -> None:
    """Keep only `metrics.jsonl` records up to `step` (the checkpoint a run resumes from, 0 for a
    fresh start): later ones are about to be redone, and a record torn by a kill is dropped."""
    if not log.exists():
        return
    kept = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    atomic_write(log, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))


def loop_state(*, step: int, elapsed: float, images_seen: int, generator: torch.Generator) -> dict:
    """The training-loop part of a checkpoint's state, shared by every trainer: counters, the
    trainer's own generator (batches, views, noise) and torch's global RNG (dropout, masks).
    Saving both RNGs is what makes a resumed run equal an uninterrupted one."""
    state = {
        "step": step,
        "elapsed": elapsed,
        "images_seen": images_seen,
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def restore_loop_state(state: dict, generator: torch.Generator) -> tuple[int, float, int]:
    """Puts the RNGs back and returns (step, elapsed seconds, images seen)."""
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"]), float(state["elapsed"]), int(state["images_seen"])
