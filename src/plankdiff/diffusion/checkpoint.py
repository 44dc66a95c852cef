"""Checkpoints that survive a kill at any moment and never unpickle untrusted objects.

    checkpoints/step_000250/model.safetensors   training weights
    checkpoints/step_000250/ema.safetensors     EMA weights (the ones features are read from)
    checkpoints/step_000250/state.pt            optimiser, LR schedule, EMA counters, RNG states,
                                                step and elapsed time (tensors and plain numbers
                                                only: loaded with weights_only=True)
    checkpoints/latest                          name of the newest complete checkpoint

A checkpoint is written into a temporary folder and renamed into place, then `latest` is
replaced atomically, so an interrupted write leaves the previous checkpoint as the newest.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

LATEST = "latest"


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
    older = sorted(p for p in root.glob("step_*") if p != final)
    for stale in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "state.pt").exists() else None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    return (
        load_file(path / "model.safetensors"),
        load_file(path / "ema.safetensors"),
        torch.load(path / "state.pt", weights_only=True, map_location="cpu"),
    )


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
