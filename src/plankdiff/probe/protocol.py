"""The evaluation protocol: one typed object that applies identically to every method's features.

The study's `protocol:` block and the command-line verbs build the same `EvaluationProtocol`, with one set of
defaults. Everything a protocol chooses between (probe loss, learning rate, weight decay, the pair,
fusion or not) is selected on validation rows with `plankdiff.probe.selection.rank`; test rows are
read once, for the selected configuration.

Kept free of torch so that importing it (from the CLI, from experiment files) is instant.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from plankdiff.choices import Loss, Precision

LOSSES: tuple[str, ...] = get_args(Loss)
Orientations = Literal[1, 8]
# Open-set rejection (`plankdiff.probe.ood`), here so that experiment files and the CLI read the
# defaults without importing scikit-learn.
DEFAULT_KEEP = 0.95  # share of in-distribution validation images kept by the calibrated cut
HOLD_OUT_EVERY = 5  # `held_out_classes`: every 5th class name in sorted order, a fixed fifth
# The score export uses by default: the highest mean AUROC on the held-out NDSB classes' VALIDATION rows
# (DDPM and supervised seed 0; docs/results/robustness.md, "Open set: scores compared"): energy 0.511,
# relative-mahalanobis 0.500, mahalanobis 0.463, knn 0.448 — all within noise of chance there.
DEFAULT_OOD_SCORE = "energy"


class EvaluationProtocol(BaseModel):
    """How features become a probe result, for every method alike."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # 8: features averaged over the flips and 90° rotations (plankton have no canonical orientation).
    orientations: Orientations = 1
    # Append the log of the object's original size (lost when images are resized to a fixed size).
    object_size: bool = False
    # Also fit one probe on the concatenated top-k pairs (ranked on validation) and keep it if it
    # wins on validation; 1: no fusion.
    fuse_top: int = Field(1, ge=1)
    # Probe losses tried; the one that wins on validation is kept (a hyper-parameter like the others).
    losses: tuple[Loss, ...] = Field(("ce", "logit-adjusted"), min_length=1)
    epochs: int = Field(40, ge=1)
    min_steps: int = Field(400, ge=1)  # optimiser steps at least, whatever the training-set size
    bootstrap: int = Field(1000, ge=0)  # resamples of the test rows for the confidence intervals
    precision: Precision = "auto"  # feature extraction: auto keeps CPU fp32 and CUDA bf16

    def probe_options(self) -> dict[str, int]:
        return {"epochs": self.epochs, "min_steps": self.min_steps}

    def probe_arguments(self) -> dict:
        """What `plankdiff.probe.run.probe_features` takes from the protocol, as keyword arguments."""
        return {
            "loss": self.losses,
            "with_size": self.object_size,
            "fuse_top": self.fuse_top,
            "bootstrap": self.bootstrap,
            "probe_options": self.probe_options(),
        }


__all__ = ["LOSSES", "EvaluationProtocol", "Loss", "Orientations", "Precision"]
