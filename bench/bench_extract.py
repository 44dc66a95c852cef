"""Feature extraction cost, in one script on the same batches:

(a) every block hooked and pooled inside its hook, against a bare forward pass of the same U-Net
    (target: hooks and pooling cost < 10 %);
(b) stopping the forward pass after the deepest requested block (encoder-only requests) against
    running the whole U-Net;
(c) peak resident memory of an extraction over the full default grid (9 timesteps × every block)
    streamed to a feature store, against the size the same features would take held in memory;
(d) the speed options of issue #5 against the same bare forward pass: two timesteps of the same
    images stacked into one batch (against two batches), channels_last, torch.compile (first-call
    compile time reported apart) and bfloat16 autocast on the CPU;
(e) `precision="bf16"` against "fp32" through `extract_features`, hooks, early stop and store
    included, for the request of the 60 %-goal run (3 blocks × 2 timesteps × 8 orientations).

    .venv/bin/python bench/bench_extract.py [--run runs/ndsb-gpu] [--data ndsb-32] [--images 2048]
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from plankdiff.data.prepare import PreparedDataset
from plankdiff.diffusion.model import load_backbone
from plankdiff.diffusion.train import to_model_range
from plankdiff.features.extract import DEFAULT_TIMESTEPS, ExtractionRequest, Extractor, extract_features


def timed(fn, repeats: int) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def speed_options(unet, noisy: torch.Tensor, steps: torch.Tensor, repeats: int) -> dict[str, float]:
    """Seconds per `len(noisy)` image-timesteps for each option, all on the same inputs."""
    doubled, both_steps = torch.cat([noisy, noisy]), torch.cat([steps, torch.full_like(steps, 1)])
    last = copy.deepcopy(unet).to(memory_format=torch.channels_last)
    noisy_last = noisy.contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(copy.deepcopy(unet))
    with torch.inference_mode():
        started = time.perf_counter()
        compiled(noisy, steps)
        compile_s = time.perf_counter() - started

        def bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                unet(noisy, steps)

        return {
            "two timesteps stacked in one batch of 256 (per 128)": timed(
                lambda: unet(doubled, both_steps), repeats
            )
            / 2,
            "channels_last": timed(lambda: last(noisy_last, steps), repeats),
            f"torch.compile (first call {compile_s:.0f} s, not counted)": timed(
                lambda: compiled(noisy, steps), repeats
            ),
            "bfloat16 autocast on the CPU": timed(bf16, repeats),
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, default=Path("runs/ndsb-gpu"))
    parser.add_argument("--data", default="ndsb-32")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=2048, help="images for the memory measurement (c)")
    parser.add_argument("--precision-images", type=int, default=1024, help="images for (e)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/extract.md"))
    args = parser.parse_args()
    unet, scheduler = load_backbone(args.run)
    dataset = PreparedDataset.open(args.data)
    rows = np.arange(args.batch_size)
    x0 = to_model_range(torch.from_numpy(np.ascontiguousarray(dataset.images[rows])))
    t = 25
    alpha = float(scheduler.alphas_cumprod[t])
    noisy = alpha**0.5 * x0 + (1 - alpha) ** 0.5 * torch.randn_like(x0)
    steps = torch.full((len(rows),), t)

    @torch.inference_mode()
    def bare():
        unet(noisy, steps)

    bare_s = timed(bare, args.repeats)
    hooked = Extractor(unet, scheduler, request=ExtractionRequest(timesteps=(t,)))
    hooked_s = timed(lambda: hooked(x0, rows, t), args.repeats)
    hooked.close()
    encoder = Extractor(
        unet, scheduler, request=ExtractionRequest(timesteps=(t,), blocks=("enc1@32", "enc2@16"))
    )
    encoder_s = timed(lambda: encoder(x0, rows, t), args.repeats)
    encoder.close()

    n = min(args.images, len(dataset))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        store = extract_features(
            unet,
            scheduler,
            dataset,
            out=Path(tmp) / "store",
            rows=np.arange(n),
            model_id="bench",
            request=ExtractionRequest(timesteps=DEFAULT_TIMESTEPS),
            show_progress=False,
        )
        grid_s = time.perf_counter() - started
        feature_bytes = sum(p["dim"] for p in store.pair_table()) * 4 * len(dataset)
        n_pairs = len(store.pairs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # After (c), so that compiling does not raise the peak memory that (c) reports.
    options = speed_options(unet, noisy, steps, args.repeats)
    precision_s = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            goal = ExtractionRequest(
                timesteps=(1, 25), blocks=("enc2@16", "enc3@8", "dec1@8"), orientations=8, precision=precision
            )
            started = time.perf_counter()
            extract_features(
                unet,
                scheduler,
                dataset,
                out=Path(tmp) / precision,
                rows=np.arange(args.precision_images),
                model_id="bench",
                request=goal,
                show_progress=False,
            )
            precision_s[precision] = time.perf_counter() - started
    lines = [
        "# Feature extraction cost",
        "",
        f"Command: `.venv/bin/python bench/bench_extract.py --run {args.run} --data {args.data}`",
        f"Backbone: {args.run} (`cpu` preset, 3.69M parameters), batch {args.batch_size} at 32×32, "
        f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, mean of {args.repeats} repeats.",
        "",
        "| pass | seconds per batch | images/s | ratio to bare forward |",
        "|---|---|---|---|",
        f"| bare forward (no hooks) | {bare_s:.3f} | {len(rows) / bare_s:.0f} | 1.00 |",
        f"| all 7 blocks hooked, pooled in the hooks | {hooked_s:.3f} | {len(rows) / hooked_s:.0f} | "
        f"{hooked_s / bare_s:.3f} (overhead {100 * (hooked_s / bare_s - 1):+.1f} %) |",
        f"| encoder blocks only, forward stopped after enc2@16 | {encoder_s:.3f} | {len(rows) / encoder_s:.0f} | "
        f"{encoder_s / bare_s:.3f} |",
        "",
        f"Full default grid ({len(DEFAULT_TIMESTEPS)} timesteps × 7 blocks = {n_pairs} pairs) on {n} images: "
        f"{grid_s:.0f} s ({n * len(DEFAULT_TIMESTEPS) / grid_s:.0f} image-timesteps/s).",
        f"Peak resident memory of this process: {peak:.0f} MiB (before extraction: {before:.0f} MiB). "
        f"The same features for all {len(dataset)} images held in memory as float32 would take "
        f"{feature_bytes / 2**20:.0f} MiB; the store streams them to disk as float16.",
    ]
    lines += [
        "",
        "Speed options (d), whole U-Net, seconds per 128 image-timesteps:",
        "",
        "| option | seconds per 128 image-timesteps | ratio to bare forward |",
        "|---|---|---|",
        *[f"| {name} | {seconds:.3f} | {seconds / bare_s:.3f} |" for name, seconds in options.items()],
        "",
        f"Extraction (e), enc2@16, enc3@8, dec1@8 × t = 1, 25 × 8 orientations, {args.precision_images} images "
        f"through the feature store: fp32 {precision_s['fp32']:.1f} s, bf16 {precision_s['bf16']:.1f} s "
        f"(bf16 takes {precision_s['bf16'] / precision_s['fp32']:.2f}× the fp32 time).",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
