"""`dino`: self-distillation without labels (Caron et al. 2021): a student matches a momentum
teacher's centred, sharpened output on another view. lightly's `DINOProjectionHead` (512 → 512 →
64 → 2048, lightly's CIFAR-10 benchmark size; the paper's 65,536 outputs would dominate a CPU
budget), `DINOLoss` (teacher temperature 0.04, student 0.1, centre momentum 0.9) and
`update_momentum` with the teacher momentum rising from 0.99 to 1 along lightly's `cosine_schedule`
over the time budget (see `byol.momentum`). Two global 32 px views (`SSL_VIEW`), no local crops:
multi-crop doubles the cost per image on a CPU. The last layer is not frozen during the first epoch
(lightly's `freeze_last_layer`), as a CPU run lasts about one epoch. Features: the teacher backbone,
as in the paper's evaluation. ResNet-18 backbone; AdamW, lr 1e-3, weight decay 0.04 (DINO's), untuned.
"""

from __future__ import annotations

import copy
import warnings

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum

from plankdiff.baselines.augment import SSL_VIEW
from plankdiff.baselines.backbones import ResNet18
from plankdiff.baselines.byol import MOMENTUM_START, momentum
from plankdiff.baselines.registry import ResNetMethod, register

OUTPUT_DIM = 2048


def _head(input_dim: int) -> DINOProjectionHead:
    with warnings.catch_warnings():
        # lightly builds the head's last layer with torch's legacy weight_norm: harmless here.
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        return DINOProjectionHead(
            input_dim=input_dim, hidden_dim=512, bottleneck_dim=64, output_dim=OUTPUT_DIM
        )


@register("dino")
class DINO(ResNetMethod):
    lr = 1e-3
    weight_decay = 0.04
    views = SSL_VIEW

    def __init__(self, *, channels: int, size: int, width: int, n_classes: int | None = None):
        super().__init__(channels=channels, size=size, width=width, n_classes=n_classes)
        self.student_head = _head(self.backbone.out_dim)
        # The teacher starts as a copy of the student (a fresh head would start elsewhere).
        self.teacher_backbone = copy.deepcopy(self.backbone)
        self.teacher_head = _head(self.backbone.out_dim)
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(output_dim=OUTPUT_DIM, warmup_teacher_temp=0.04, teacher_temp=0.04)

    def feature_network(self) -> ResNet18:
        return self.teacher_backbone

    def training_step(self, pixels, generator, *, labels=None, progress=None) -> torch.Tensor:
        m = momentum(progress, MOMENTUM_START)
        with torch.no_grad():
            update_momentum(self.backbone, self.teacher_backbone, m=m)
            update_momentum(self.student_head, self.teacher_head, m=m)
        views = [self.views(pixels, generator), self.views(pixels, generator)]
        with torch.no_grad():
            teacher = [self.teacher_head(self.teacher_backbone(v)) for v in views]
        student = [self.student_head(self.backbone(v)) for v in views]
        return self.criterion(teacher, student)
