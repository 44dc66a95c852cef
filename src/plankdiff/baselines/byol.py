"""`byol`: an online network predicts a momentum copy's projection of another view (Grill et al.
2020), with lightly's `BYOLProjectionHead` (512 → 1024 → 256), `BYOLPredictionHead` (256 → 1024 →
256), `NegativeCosineSimilarity` (symmetrised over the two views) and `update_momentum` with a
`cosine_schedule` of the momentum from 0.99 to 1 over the time budget (constant 0.99 without one).
BYOL's 0.996 is for 1000-epoch runs; a CPU budget gives a few hundred steps, over which the target
would barely move. Views: `SSL_VIEW`. Features: the online backbone, as in the paper's evaluation.
ResNet-18 backbone; AdamW, lr 2e-3, weight decay 0.05 (untuned).
"""

from __future__ import annotations

import copy

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule

from plankdiff.baselines.augment import SSL_VIEW
from plankdiff.baselines.registry import ResNetMethod, register

MOMENTUM_START = 0.99
SCHEDULE_RESOLUTION = 10_000  # cosine_schedule counts integer steps: the budget fraction in 1e-4 steps


def momentum(progress: float | None, start: float) -> float:
    """A teacher's momentum: `start` rising to 1 along a cosine over the time budget."""
    if progress is None:
        return start
    return cosine_schedule(round(min(progress, 1.0) * SCHEDULE_RESOLUTION), SCHEDULE_RESOLUTION, start, 1.0)


@register("byol")
class BYOL(ResNetMethod):
    views = SSL_VIEW

    def __init__(self, *, channels: int, size: int, width: int, n_classes: int | None = None):
        super().__init__(channels=channels, size=size, width=width, n_classes=n_classes)
        self.projection_head = BYOLProjectionHead(
            input_dim=self.backbone.out_dim, hidden_dim=1024, output_dim=256
        )
        self.prediction_head = BYOLPredictionHead(input_dim=256, hidden_dim=1024, output_dim=256)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()

    def training_step(self, pixels, generator, *, labels=None, progress=None) -> torch.Tensor:
        m = momentum(progress, MOMENTUM_START)
        with torch.no_grad():
            update_momentum(self.backbone, self.backbone_momentum, m=m)
            update_momentum(self.projection_head, self.projection_head_momentum, m=m)
        x0, x1 = self.views(pixels, generator), self.views(pixels, generator)
        p0 = self.prediction_head(self.projection_head(self.backbone(x0)))
        p1 = self.prediction_head(self.projection_head(self.backbone(x1)))
        with torch.no_grad():
            z0 = self.projection_head_momentum(self.backbone_momentum(x0))
            z1 = self.projection_head_momentum(self.backbone_momentum(x1))
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
