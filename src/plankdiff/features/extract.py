"""Read the frozen EMA denoiser's activations at every hooked block, at a grid of timesteps.

For each batch of images and each requested t: x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε, one forward pass of
the denoiser, and every hooked block's activation pooled inside its hook (global average by
default, 2×2 average as an option), so full feature maps are never kept. ε for an image at t
is seeded by (image row, t, draw), so features are reproducible and independent of batching.
The forward pass stops at the deepest block still needed (encoder-only requests skip the decoder).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel

from plankdiff.choices import Pooling, Precision
from plankdiff.data.prepare import PreparedDataset
from plankdiff.diffusion.config import NUM_TIMESTEPS
from plankdiff.diffusion.train import dihedral_augment_all, to_model_range
from plankdiff.features.blocks import Block, list_blocks
from plankdiff.features.pairs import Pair
from plankdiff.features.spec import DEFAULT_TIMESTEPS
from plankdiff.features.store import FeatureStore
from plankdiff.precision import autocast, resolve_precision
from plankdiff.progress import progress_bar
from plankdiff.provenance import git_sha, sha256_file, sha256_json


class _StopForward(Exception):
    """Raised by the hook of the deepest needed block: the rest of the U-Net is not run."""


@dataclass(frozen=True)
class ExtractionRequest:
    timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS
    blocks: tuple[str, ...] | None = None  # None: every block
    pooling: Pooling = "avg"
    noise_draws: int = 1
    orientations: int = 1  # 1, or 8: average over the flips and 90° rotations
    sub_blocks: bool = False
    batch_size: int = 128
    precision: Precision = "auto"

    def __post_init__(self) -> None:
        # Messages name the CLI option; the study's `features.timesteps` reads the same.
        if not self.timesteps:
            raise ValueError("--timesteps: at least one timestep is needed")
        outside = [t for t in self.timesteps if not 0 <= t < NUM_TIMESTEPS]
        if outside:
            raise ValueError(
                f"--timesteps: {outside} outside 0..{NUM_TIMESTEPS - 1} (the DDPM's T = {NUM_TIMESTEPS})"
            )
        if self.noise_draws < 1:
            raise ValueError(f"--noise-draws {self.noise_draws}: must be at least 1")
        if self.orientations not in (1, 8):
            raise ValueError(f"--orientations {self.orientations}: 1 (as is) or 8 (dihedral average)")
        if self.pooling not in get_args(Pooling):
            raise ValueError(f"--pooling {self.pooling!r}: one of {', '.join(get_args(Pooling))}")
        if self.precision not in get_args(Precision):
            raise ValueError(f"--precision {self.precision!r}: one of {', '.join(get_args(Precision))}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size {self.batch_size}: must be at least 1")

    def identity(self) -> dict:
        """What decides a store's key. `precision` joins it only when not "auto", so stores written
        before the option existed keep their key and are reused."""
        fields = dict(self.__dict__)
        if fields["precision"] == "auto":
            del fields["precision"]
        return fields


def timestep_info(scheduler: DDPMScheduler, t: int) -> dict:
    alpha_bar = float(scheduler.alphas_cumprod[t])
    return {
        "t": t,
        "alpha_bar": alpha_bar,
        "snr": alpha_bar / (1 - alpha_bar),
        "log_snr": math.log(alpha_bar / (1 - alpha_bar)),
    }


def _pool(x: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    if pooling == "avg":
        return x.float().mean(dim=(2, 3))
    return F.adaptive_avg_pool2d(x.float(), 2).flatten(1)


def seeded_noise(rows: np.ndarray, t: int, draw: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Gaussian noise per image seeded by (row, t, draw): the same image gets the same noise in any
    batch, order or run, so features (and anything else scored on noised images) are reproducible."""
    noise = np.empty((len(rows), *shape), dtype=np.float32)
    for i, row in enumerate(rows):
        noise[i] = np.random.default_rng([int(row), t, draw]).standard_normal(shape, dtype=np.float32)
    return torch.from_numpy(noise)


class Extractor:
    """Hooks a frozen UNet2DModel; `__call__` maps a batch of x_0 at one t to pooled block features."""

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, *, request: ExtractionRequest):
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler, self.request = scheduler, request
        every = list_blocks(unet, sub_blocks=request.sub_blocks)
        wanted = set(request.blocks) if request.blocks else {b.name for b in every}
        unknown = wanted - {b.name for b in every}
        if unknown:
            raise ValueError(
                f"--blocks: unknown block(s) {', '.join(sorted(unknown))}; available: {', '.join(b.name for b in every)}"
            )
        self.blocks: list[Block] = [b for b in every if b.name in wanted]
        self.device = next(unet.parameters()).device
        # auto stays fp32 on CPUs (see `resolve_precision`): a study compares features it extracted before.
        self._precision = resolve_precision(request.precision, self.device, cpu_auto=False)
        self._captured: dict[str, torch.Tensor] = {}
        modules = dict(unet.named_modules())
        last = self.blocks[-1].name  # blocks are in forward order
        self._handles = [
            modules[b.module].register_forward_hook(self._hook(b.name, b.name == last)) for b in self.blocks
        ]

    def _hook(self, name: str, stop_after: bool):
        def hook(_module, _inputs, output):
            tensor = output if isinstance(output, torch.Tensor) else output[0]
            self._captured[name] = _pool(tensor, self.request.pooling)
            if stop_after:
                raise _StopForward

        return hook

    def dims(self) -> dict[str, int]:
        factor = 4 if self.request.pooling == "avg2x2" else 1
        return {b.name: b.channels * factor for b in self.blocks}

    @torch.inference_mode()
    def __call__(self, x0: torch.Tensor, rows: np.ndarray, t: int) -> dict[str, torch.Tensor]:
        alpha_bar = float(self.scheduler.alphas_cumprod[t])
        total: dict[str, torch.Tensor] = {}
        views = dihedral_augment_all(x0) if self.request.orientations == 8 else [x0]
        for draw in range(self.request.noise_draws):
            noise = seeded_noise(rows, t, draw, tuple(x0.shape[1:]))
            for view in views:
                noisy = math.sqrt(alpha_bar) * view + math.sqrt(1 - alpha_bar) * noise
                timesteps = torch.full((len(rows),), t, device=self.device)
                self._captured.clear()
                with autocast(self.device, self._precision), contextlib.suppress(_StopForward):
                    self.unet(noisy.to(self.device), timesteps)
                for name, value in self._captured.items():
                    total[name] = total[name] + value if name in total else value.clone()
        count = self.request.noise_draws * len(views)
        return {name: (value / count).cpu() for name, value in total.items()}

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def model_hash(run: Path | str) -> str:
    run = Path(run)
    weights = run / "ema" / "diffusion_pytorch_model.safetensors"
    if not weights.exists():
        weights = run / "diffusion_pytorch_model.safetensors"
    return sha256_file(weights)


def extract_features(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    dataset: PreparedDataset,
    *,
    out: Path | str,
    request: ExtractionRequest = ExtractionRequest(),
    rows: Sequence[int] | np.ndarray | None = None,
    model_id: str,
    backbone: Path | None = None,
    show_progress: bool = True,
    checkpoint_rows: int = 2048,
) -> FeatureStore:
    """Stream `rows` of `dataset` through the denoiser and write every (block, t) pair to `out`.

    `model_id` (a hash of the weights) and the dataset key decide whether an existing store at
    `out` is reused as is, resumed, or refused. `backbone`: the run folder the weights come from,
    whose record of training images the store carries (see `plankdiff.data.lineage`).
    """
    out = Path(out)
    rows = np.arange(len(dataset)) if rows is None else np.asarray(rows, dtype=np.int64)
    # Hooks stay on the caller's U-Net only while this function runs, whatever way it exits.
    with contextlib.closing(Extractor(unet, scheduler, request=request)) as extractor:
        dims = extractor.dims()
        pairs = [
            {
                "name": Pair(b.name, t).name,
                "block": b.name,
                "resolution": b.resolution,
                "channels": b.channels,
                "dim": dims[b.name],
                **timestep_info(scheduler, t),
            }
            for t in request.timesteps
            for b in extractor.blocks
        ]
        identity = {
            "model_hash": model_id,
            "dataset_key": dataset.key,
            "rows_hash": sha256_json(rows.tolist()),
            "request": request.identity(),
        }
        info = {
            **identity,
            "key": sha256_json(identity),
            "dataset": dataset.name,
            "dataset_root": str(dataset.root),
            "rows": rows.tolist(),
            "classes": dataset.classes,
            "pairs": pairs,
            "blocks": [b.__dict__ for b in extractor.blocks],
            "git_sha": git_sha(),
            # Where the weights came from, so `plankdiff export --from` can find them (not in the key:
            # the same weights moved elsewhere give the same features).
            "backbone": str(Path(backbone).resolve()) if backbone is not None else None,
        }
        existing = FeatureStore(out)
        if (out / "store.json").exists():
            if existing.info["key"] != info["key"]:
                raise FileExistsError(
                    f"{out}: holds features of another model, dataset or request; choose another --out or delete it"
                )
            if existing.complete:
                return existing
        store = FeatureStore.create(out, info, {p["name"]: p["dim"] for p in pairs}, backbone=backbone)
        arrays = store.open_arrays()
        start = store.rows_done()
        size = request.batch_size
        images = dataset.images
        with progress_bar(f"features {dataset.name}", total=len(rows), enabled=show_progress) as advance:
            advance(start)
            since_checkpoint = 0
            for begin in range(start, len(rows), size):
                batch_rows = rows[begin : begin + size]
                x0 = to_model_range(torch.from_numpy(np.ascontiguousarray(images[batch_rows])))
                for t in request.timesteps:
                    for block, value in extractor(x0, batch_rows, t).items():
                        arrays[Pair(block, t).name][begin : begin + len(batch_rows)] = value.numpy().astype(
                            np.float16
                        )
                since_checkpoint += len(batch_rows)
                if since_checkpoint >= checkpoint_rows or begin + size >= len(rows):
                    for array in arrays.values():
                        array.flush()
                    store.mark_done(begin + len(batch_rows))
                    since_checkpoint = 0
                advance(len(batch_rows))
        return store
