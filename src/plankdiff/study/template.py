"""`plankdiff init`: a commented experiment file for a folder or zip of one's own images, which
`plankdiff run` accepts as is. Its defaults suit 2 CPU cores; every key is explained in place."""

from __future__ import annotations

import re
from pathlib import Path

from plankdiff import __version__
from plankdiff.choices import NOISE_CEILING

# Shown where no source was given: `plankdiff run` then names this path as missing.
PLACEHOLDER = "path/to/your/images"


def key_for(path: str | Path, fallback: str) -> str:
    """A file-name-safe key from a path's stem (`My Plankton.zip` → `my-plankton`)."""
    key = re.sub(r"[^a-z0-9_+-]+", "-", Path(path).stem.lower()).strip("-")
    return key or fallback


def experiment_template(*, name: str, dataset: str, source: str) -> str:
    """The experiment file's text: one dataset, its long-tailed and balanced experiments, the DDPM
    and two baselines at equal training FLOPs."""
    return f"""\
# An experiment on your own images, written by `plankdiff init` (plankdiff {__version__}).
#   plankdiff run THIS_FILE --dry-run   # lists what would run
#   plankdiff run THIS_FILE             # writes results/{name}/report.html (resumable: rerun after a stop)
# Then a classifier and counts per sample from what the study selected:
#   plankdiff export --from results/{name}/metrics/{dataset}_long-tailed/diffusion/seed0 --out models/{name}
#   plankdiff predict models/{name} NEW_IMAGES... --out predictions --counts pacc
#
# Budgets are training FLOPs (max_tflops, in units of 1e12), the same on a busy or an idle machine;
# max_minutes (wall clock) may be given instead or as well (whichever runs out first). On 2 idle CPU
# cores the DDPM's `cpu` preset trains about 6-10 TFLOP a minute at 32 px (3.2 GFLOP per image forward
# and backward, 31-52 images/s seen on these machines), so the defaults below give every backbone
# about 2.5-4 minutes.
# Defaults are sized for 2 CPU cores: about 15-30 minutes for a few thousand images.

name: {name}  # results go to results/<name>/, work files to cache/studies/<name>/
description: >-
  My own images: the DDPM's frozen features against supervised and SimCLR backbones at equal
  training FLOPs, on the natural (long-tailed) and a balanced class distribution.
# Shown first in the report: what these budgets mean for the numbers.
note: >-
  One replicate at about 2.5 minutes per backbone: a first look, not a verdict on which method is
  better (add seeds and budget for that).

# One replicate per seed: each retrains every backbone, refits every probe and (vary_partition)
# draws its own train/val/test partition. Three or more give a mean ± std.
seeds: [0]
vary_partition: true

# Image collections: a folder or a .zip in <class>/<image> layout (manifest.csv used when present).
# Relative paths are read from the directory `plankdiff run` is started in.
datasets:
  {dataset}:
    source: {source}
    size: 32           # pixels per side after preprocessing (8-512; 32 suits CPUs, 64 a GPU)
    mode: fit          # fit: resize each image to size x size; keep-scale: one common shrink factor, relative size kept
    channels: 1        # 1 (grayscale) or 3 (RGB)
    polarity: true     # invert images so every one has a dark background and a bright object
    # background: normalise   # none | normalise (default: normalise where polarity is on)
    # markers: remove        # remove | keep: small separate parts in a corner (scale markers) become background
    #                        # (default: remove where the background is normalised)
    # noise_ceiling: {NOISE_CEILING:g}      # the most noise (grey levels) the border may claim when normalising; a larger
    #                        # spread is an object touching the border. null: no ceiling (blanks frame-filling objects)

# What each backbone learns from: the train rows of a split of a dataset (never its validation or
# test rows). split: long-tailed (stratified, the natural class distribution) or
# "temporal:<train years>-<test years>" for capture-dated images, e.g. "temporal:2018+2019-2020".
pretrain:
  {dataset}: {{dataset: {dataset}, split: long-tailed}}

# What is probed and scored. {{pretrain: KEY, split: long-tailed}} is scored on the pre-training
# partition itself (no backbone sees a validation or test image); split: balanced keeps the classes
# with splits.balanced_min_train+ training images, capped at splits.balanced_cap, and is skipped
# with a warning when fewer than 2 classes qualify. The shipped families ndsb, zoolake and
# ndsb-pwssc may be listed too (they need the shipped datasets). Label efficiency, k-means and the
# t-SNE figure are read on the first long-tailed experiment.
experiments:
  - {{pretrain: {dataset}, split: long-tailed}}
  - {{pretrain: {dataset}, split: balanced}}

# How partitions are drawn (stratified per class).
splits:
  val_fraction: 0.1        # share of each class for validation, where every choice is made
  test_fraction: 0.2       # share of each class for test, read once per replicate
  balanced_min_train: 60   # balanced split: classes with at least this many training images...
  balanced_cap: 100        # ...each capped at this many (validation and test in proportion)

# The DDPM (U-Net denoiser, trained without labels). preset: tiny (tests), cpu (32 px on CPUs),
# cpu-wide8 and cpu-64 (cpu's FLOPs per step, other shape or 64 px), paper (64 px on a GPU) or a
# YAML file of your own.
diffusion:
  preset: cpu
  max_tflops: 25
  # max_minutes: 10
  # batch_size: 64       # default: the preset's
  # Training options replacing the preset's (default: the preset's; docs/results/ddpm-variants.md):
  # timestep_sampling: {{kind: low-noise, power: 2}}  # t = floor(1000 u^power): more steps at small t
  # ema_warmup: {{inv_gamma: 1.0, power: 0.6667}}     # diffusers' EMA warm-up instead of its ramp
  # warmup_steps: 10     # learning-rate warm-up steps (the cpu preset's 100 suit long runs)
  # samples: 36          # DDIM sample grid drawn after training (0: none)

# The methods compared with the DDPM, each with the same budget (one budget for all of them).
# methods: any of supervised (ResNet-18 on the labels), simclr, byol, dino, mae; [] trains the
# DDPM alone (then no budget is needed).
baselines:
  methods: [supervised, simclr]
  max_tflops: 25
  # max_minutes: 10
  include_raw_pixels: true   # a linear probe on the pixels themselves, the floor to beat
  # batch_size: 64       # default: each method's own
  # width: 8             # network width (ResNet base, ViT); default: each method's own (64; MAE 192)

# The DDPM's candidate features: every (block, timestep t) pair. A coarse pass over all timesteps on
# a few images per class keeps the best keep_timesteps (and keep_blocks) for the full extraction.
features:
  timesteps: [1, 5, 10, 25, 50, 100]   # noise levels, 0-999 (small t are best for plankton)
  per_class_train: 10    # coarse pass: training images per class
  per_class_val: 5       # coarse pass: validation images per class
  keep_timesteps: 2
  # keep_blocks: 3       # default: every block
  batch_size: 128

# One protocol for every method's features; every choice in it is made on validation.
protocol:
  orientations: 1        # 1, or 8: features averaged over flips and 90° rotations (8x extraction time)
  object_size: false     # append the log of the object's original size (lost by resizing)
  fuse_top: 1            # >1: also try the top-k pairs concatenated, kept if better on validation
  losses: [ce, logit-adjusted]   # probe losses tried (logit-adjusted suits long tails)
  epochs: 20
  min_steps: 200         # probe optimiser steps at least, whatever the number of images
  bootstrap: 200         # test resamples for the 95 % intervals
  precision: auto        # feature extraction: auto (fp32 on CPU, bf16 on CUDA), fp32, bf16

# At most this many images per class in each part of every split: bounds extraction time on large
# collections (remove the line to use every image).
caps: {{train: 300, val: 40, test: 80}}

# Label efficiency: the probe refitted on these shares of the training labels.
label_fractions: [0.1, 0.25, 1.0]
kmeans: true   # k-means (K = number of classes) on the test images' selected features

# Every backbone's training precision: auto (bf16 autocast where the CPU or GPU has bf16 units,
# ~1.4-2x faster on such CPUs), fp32 or bf16.
training_precision: auto

# Robustness, on the first long-tailed experiment (or those named in experiments: [...]):
# evaluations:
#   processing_shift:      # the test images rebuilt from their raw files as another instrument
#     shifts: [grey-background, inverted, jpeg, rescaled, corner-disc, half-contrast, combined]
#     study_seeds: [0]     # the seeds it runs in (default: every seed; it extracts every method's
#                          # features on seven copies of the test images)
#   open_set:              # classes held out of the probe; the share of their images rejected
#     hold_out_every: 5    # every 5th class name (sorted): a fixed fifth, chosen before any result
#     keep: 0.95           # the cut keeps this share of the known classes' validation images
#   quantification:        # class counts under shift (CC, PCC, PACC, EMQ) on every image of a
#                          # shifted target, per capture day and pooled; needs an experiment with
#                          # a shifted target (ZooLake 2018+2019 -> 2020, NDSB -> PWSSC)
#     experiments: [zoolake_2018+2019-to-2020]   # or the name, zoolake/2018+2019→2020
#     min_images: 20       # days with fewer images of the probe's classes stay out of the median

# Ablations (opt-in; they add experiments and change none): background: true repeats the ndsb-pwssc
# and ZooLake 2018+2019 -> 2020 experiments without background normalisation, every backbone
# pre-trained again on that preparation of the same images.
# ablations: {{background: true}}
"""


def write_experiment(path: Path, *, source: Path | None, force: bool = False) -> tuple[Path, str]:
    """Write the experiment file for `source` (checked to be a readable collection) at `path`.
    Returns the path and a one-line summary of the source."""
    from plankdiff.data.sources import Collection

    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path}: already exists; choose another path or pass --force")
    if source is None:
        text_source, summary = PLACEHOLDER, f"edit datasets.images.source in {path}: no --source given"
        dataset = "images"
    else:
        collection = Collection(source)  # a SourceError (ValueError) for a missing or unreadable source
        text_source = str(Path(source).resolve())
        counts = {label: 0 for label in collection.classes}
        for item in collection.items:
            counts[item.label] += 1
        summary = (
            f"{len(collection)} images in {len(counts)} classes "
            f"({min(counts.values())}-{max(counts.values())} per class) in {source}"
        )
        dataset = key_for(source, "images")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(experiment_template(name=key_for(path, "mine"), dataset=dataset, source=text_source))
    return path, summary


__all__ = ["experiment_template", "write_experiment"]
