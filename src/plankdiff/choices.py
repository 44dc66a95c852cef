"""The choice sets of the library's options, each defined once.

The library annotates its parameters with these Literals and the CLI uses the same Literals as
option types, so a typo is refused by the command line before anything runs, with the list of
valid values, and the two can never disagree. They live here, not next to the code that uses them,
because this module imports nothing heavy: the CLI reads it to build `--help` without torch.
"""

from __future__ import annotations

from typing import Literal

# data
SizeMode = Literal["fit", "keep-scale"]
# background and contrast normalisation after polarity (see plankdiff.data.preprocess)
Background = Literal["none", "normalise"]
SplitKind = Literal["long-tailed", "balanced", "temporal", "cross-domain"]

# diffusion
Preset = Literal["tiny", "cpu", "paper"]

# features (and the baselines' feature maps)
Pooling = Literal["avg", "avg2x2"]
# auto: bfloat16 autocast on CUDA, float32 on the CPU. bf16 on the CPU pays only where the CPU has
# bfloat16 matrix units (AMX, AVX512-BF16); see bench/results/extract.md.
Precision = Literal["auto", "fp32", "bf16"]

# probe
Protocol = Literal["linear", "knn"]
Loss = Literal["ce", "class-balanced", "logit-adjusted"]

# deploy
SampleBy = Literal["input", "folder", "day"]
# what predict writes besides its CSVs: nothing more, or an EcoTaxa import bundle (ecotaxa/)
OutputFormat = Literal["csv", "ecotaxa"]
# how predict counts per sample: the decisions after abstention, or QuaPy's quantifiers
Counting = Literal["cc", "pcc", "pacc", "emq"]

# where a command runs: auto picks CUDA when there is one (accelerate's choice for predict); the
# command line also takes cuda:N, one GPU of several (`plankdiff.cli_support.device_option`)
Device = Literal["auto", "cpu", "cuda"]
