"""`supervised`: ResNet-18 trained from scratch with labels, the reference every label-free method
is measured against.

Cross-entropy with label smoothing 0.1 on the labelled train rows of a split only (the trainer
refuses to run it without `--split`); AdamW, lr 2e-3, weight decay 0.05 (not on norms and biases);
views: flips and 90° rotations only (`SUPERVISED_VIEW`), the recipe of the reference run in
../shared/notes/reference-runs.md. Its own linear head gives the "own head" accuracy; the probe,
like for every method, reads the frozen penultimate features (`pool`) and the earlier blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from plankdiff.baselines.augment import SUPERVISED_VIEW
from plankdiff.baselines.registry import ResNetMethod, register


@register("supervised")
class Supervised(ResNetMethod):
    uses_labels = True
    views = SUPERVISED_VIEW

    def __init__(self, *, channels: int, size: int, width: int, n_classes: int | None = None):
        super().__init__(channels=channels, size=size, width=width, n_classes=n_classes)
        self.head = nn.Linear(self.backbone.out_dim, n_classes)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=0.1)

    def training_step(self, pixels, generator, *, labels=None, progress=None) -> torch.Tensor:
        if labels is None:  # the trainer passes them for methods with `uses_labels`
            raise RuntimeError("supervised needs the labels of its batch")
        return self.criterion(self.head(self.backbone(self.views(pixels, generator))), labels)

    def head_logits(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(features["pool"])
