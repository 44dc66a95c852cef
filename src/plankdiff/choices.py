"""The choice sets of the library's options, each defined once.

The library annotates its parameters with these Literals and the CLI uses the same Literals as
option types, so a typo is refused by the command line before anything runs, with the list of
valid values, and the two can never disagree. They live here, not next to the code that uses them,
because this module imports nothing heavy: the CLI reads it to build `--help` without torch
(likewise the one numeric default `--help` shows, NOISE_CEILING).
"""

from __future__ import annotations

from typing import Literal

# data
SizeMode = Literal["fit", "keep-scale"]
# background and contrast normalisation after polarity (see plankdiff.data.preprocess)
Background = Literal["none", "normalise"]
# small separate parts in a corner of the frame (scale markers, labels): kept, or removed as background
Markers = Literal["keep", "remove"]
# The most background noise the image border may claim in background normalisation (the spread
# of `plankdiff.data.preprocess.border_level`, a robust σ in grey levels) in new preparations
# (`prepare`, `data prepare --noise-ceiling`, a study's `datasets.<name>.noise_ceiling`); here, not
# in preprocess, because `data prepare --help` shows it. A spread above it is an object covering
# much of the border, not noise: uncapped, an NDSB tunicate_partial crop filling its frame reads
# spread 88, an object step of 265 that no pixel can pass, and the image became all zeros (390 of
# NDSB's 30,336 images, 273 of them tunicate_partial: docs/results/data.md). On 1,500 images per
# dataset the spread is 0 at the median and 90th percentile and above 20 for 1.5 % of NDSB, 0.07 %
# of ZooLake, none of PWSSC; the processing-shift benchmark's grey background carries Gaussian
# noise of σ 12. So 20 leaves real noise alone, and caps the object step at 3 × 20 = 60 levels.
NOISE_CEILING = 20.0
SplitKind = Literal["long-tailed", "balanced", "temporal", "cross-domain"]

# diffusion
# cpu-wide8 and cpu-64: the `cpu` preset at equal training FLOPs, another shape or 64 px (issue #15)
Preset = Literal["tiny", "cpu", "cpu-wide8", "cpu-64", "paper"]

# features (and the baselines' feature maps)
Pooling = Literal["avg", "avg2x2"]
# auto: bfloat16 autocast where the device has bf16 units (a bf16 GPU; for training also a CPU with AMX
# or AVX512-BF16, feature extraction keeps fp32 on CPUs), else float32: `plankdiff.precision`.
# See bench/results/extract.md and bench/results/train_precision.md.
Precision = Literal["auto", "fp32", "bf16"]

# probe
Protocol = Literal["linear", "knn"]
Loss = Literal["ce", "class-balanced", "logit-adjusted"]

# evaluation: the processing shifts (plankdiff.evaluation.processing_shift), and the open-set score
ShiftName = Literal[
    "grey-background", "inverted", "jpeg", "rescaled", "corner-disc", "half-contrast", "combined"
]
# the open-set (out-of-distribution) score on the probe's features (see plankdiff.probe.ood)
OODScore = Literal["mahalanobis", "relative-mahalanobis", "knn", "energy"]

# deploy
SampleBy = Literal["input", "folder", "day"]
# what predict writes besides its CSVs: nothing more, or an EcoTaxa import bundle (ecotaxa/)
OutputFormat = Literal["csv", "ecotaxa"]
# how predict counts per sample: the decisions after abstention, or QuaPy's quantifiers
Counting = Literal["cc", "pcc", "pacc", "emq"]
# what `export --ood` takes: a score, or off (no image is ever called `unknown`)
OODOption = Literal[OODScore, "off"]

# where a command runs: auto picks CUDA when there is one (accelerate's choice for predict); the
# command line also takes cuda:N, one GPU of several (`plankdiff.cli_support.device_option`)
Device = Literal["auto", "cpu", "cuda"]
