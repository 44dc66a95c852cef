"""Training throughput of plankdiff's DDPM loop against the reference loop of diffusers'
`examples/unconditional_image_generation/train_unconditional.py`, same model (`cpu` preset, 3.69M
parameters), batch and precision (fp32 on CPU), in one script; then what each option gives.

The reference loop is reproduced as that script runs it: a torch DataLoader over PIL images with
torchvision transforms (RandomHorizontalFlip, ToTensor, Normalize([0.5], [0.5])), plain AdamW,
`noise_scheduler.add_noise`, MSE on ε, `clip_grad_norm_(1.0)`, LR scheduler step, EMAModel step.

    .venv/bin/python bench/bench_diffusion_train.py [--steps 12] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from PIL import Image
from torchvision import transforms

from plankdiff.data.prepare import PreparedDataset
from plankdiff.diffusion.config import load_config
from plankdiff.diffusion.model import build_scheduler, build_unet
from plankdiff.diffusion.train import DiffusionTrainer


class PilImages(torch.utils.data.Dataset):
    def __init__(self, pixels: np.ndarray):
        self.pixels = pixels
        self.transform = transforms.Compose(
            [transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize([0.5], [0.5])]
        )

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(Image.fromarray(np.asarray(self.pixels[i, 0])))


def reference_loop(dataset: PreparedDataset, batch_size: int, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    config = load_config("cpu")
    model = build_unet(config, image_size=32, channels=1)
    noise_scheduler = build_scheduler(config)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=2e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8
    )
    lr_scheduler = get_scheduler(
        "cosine", optimizer=optimizer, num_warmup_steps=100, num_training_steps=10_000
    )
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
    loader = torch.utils.data.DataLoader(PilImages(dataset.images), batch_size=batch_size, shuffle=True)
    batches = iter(loader)
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            started = time.perf_counter()
        clean = next(batches)
        noise = torch.randn(clean.shape)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (clean.shape[0],)).long()
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        loss = F.mse_loss(model(noisy, timesteps).sample.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        ema.step(model.parameters())
    return steps * batch_size / (time.perf_counter() - started)


def plankdiff_loop(dataset: PreparedDataset, batch_size: int, steps: int, warmup: int, **options) -> float:
    compile_model = options.pop("compile", False)
    config = load_config("cpu", batch_size=batch_size, **options)
    trainer = DiffusionTrainer(
        config=config, dataset=dataset, out=Path("/tmp/bench-diffusion"), show_progress=False
    )
    if compile_model:
        trainer.model = torch.compile(trainer.model)
    generator = torch.Generator().manual_seed(0)
    for step in range(warmup + steps):
        if step == warmup:
            started = time.perf_counter()
        trainer.train_step(torch.randint(0, len(trainer.images), (batch_size,), generator=generator))
    return steps * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="ndsb-32")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("bench/results/diffusion_train.md"))
    args = parser.parse_args()
    dataset = PreparedDataset.open(args.data)
    b, s, w = args.batch_size, args.steps, args.warmup
    rows = [("diffusers reference loop (train_unconditional.py)", reference_loop(dataset, b, s, w))]
    rows.append(
        (
            "plankdiff (defaults: fused AdamW, in-memory uint8 batches, dihedral augment)",
            plankdiff_loop(dataset, b, s, w),
        )
    )
    rows.append(("plankdiff + channels_last", plankdiff_loop(dataset, b, s, w, channels_last=True)))
    rows.append(("plankdiff + torch.compile", plankdiff_loop(dataset, b, s, w, compile=True)))
    reference = rows[0][1]
    lines = [
        "# DDPM training throughput: plankdiff against diffusers' reference loop",
        "",
        f"Command: `.venv/bin/python bench/bench_diffusion_train.py --steps {s} --batch-size {b}`",
        f"Model: `cpu` preset (3.69M parameters), 32×32×1, batch {b}, fp32, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {s} timed steps after {w} warm-up steps.",
        "",
        "| loop | images/s | ratio to reference |",
        "|---|---|---|",
        *[f"| {name} | {rate:.1f} | {rate / reference:.2f}× |" for name, rate in rows],
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
