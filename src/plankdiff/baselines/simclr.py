"""`simclr`: contrastive learning of two views of each image (Chen et al. 2020), with lightly's
`SimCLRProjectionHead` (512 → 512 → 128 at width 64, as lightly's CIFAR-10 benchmark) and `NTXentLoss`
(temperature 0.5, SimCLR's best for CIFAR-sized images and small batches; the other images of the
batch are the negatives). Views: `SSL_VIEW` (crop 0.6–1, flips and rotations, brightness/contrast,
light blur). ResNet-18 backbone; AdamW, lr 2e-3, weight decay 0.05 (the supervised recipe, untuned).
"""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead

from plankdiff.baselines.augment import SSL_VIEW
from plankdiff.baselines.registry import ResNetMethod, register


@register("simclr")
class SimCLR(ResNetMethod):
    views = SSL_VIEW

    def __init__(self, *, channels: int, size: int, width: int, n_classes: int | None = None):
        super().__init__(channels=channels, size=size, width=width, n_classes=n_classes)
        dim = self.backbone.out_dim
        self.projection_head = SimCLRProjectionHead(input_dim=dim, hidden_dim=dim, output_dim=128)
        self.criterion = NTXentLoss(temperature=0.5)

    def training_step(self, pixels, generator, *, labels=None, progress=None) -> torch.Tensor:
        z0 = self.projection_head(self.backbone(self.views(pixels, generator)))
        z1 = self.projection_head(self.backbone(self.views(pixels, generator)))
        return self.criterion(z0, z1)
