"""The two backbones the baselines share: torchvision's ResNet-18 and VisionTransformer, adapted to
small plankton images, each with the feature blocks it exposes to the feature store.

ResNet-18 (supervised, SimCLR, BYOL, DINO). torchvision's ImageNet stem (7×7 stride-2 convolution
then a stride-2 max-pool) shrinks a 32 px image to 8 px before the first residual stage, throwing
away most of the detail a small plankter has; as for CIFAR, the stem here is one 3×3 stride-1
convolution and no max-pool, so the stages run at 32, 16, 8 and 4 px. The stem takes as many input
channels as the dataset has (1 for grayscale). `width` scales every stage (64 = the standard
ResNet-18, 11.2M parameters at 1 channel); the tests use 8.

ViT (MAE). torchvision's VisionTransformer with its patch projection rebuilt for the dataset's
channel count; at 32 px, 4 px patches give an 8×8 token grid (65 tokens with the class token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.models.vision_transformer import VisionTransformer

from plankdiff.choices import Pooling


@dataclass(frozen=True)
class FeatureBlock:
    """One pooled feature a backbone exposes: a pair of the feature store, with t = None."""

    name: str
    resolution: int  # side of the map (or token grid) it is pooled from, in pixels or tokens
    channels: int
    dim: int  # channels × pooled cells
    pooling: str


def pool(x: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Global average (`avg`) or 2×2 average (`avg2x2`, keeps the coarse layout) of [B, C, H, W]."""
    if pooling == "avg":
        return x.float().mean(dim=(2, 3))
    return F.adaptive_avg_pool2d(x.float(), 2).flatten(1)


class ResNet18(ResNet):
    """torchvision ResNet-18 with a 3×3 stride-1 stem, no max-pool and no classifier: `forward`
    returns the globally pooled `layer4` output (the penultimate features, `out_dim` wide)."""

    STAGES = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, *, channels: int, width: int = 64):
        if not (channels >= 1 and width >= 1):
            raise ValueError(f"channels ({channels}) and width ({width}) must be positive")
        self.width = width  # read by `_make_layer` while ResNet.__init__ builds the stages
        super().__init__(BasicBlock, [2, 2, 2, 2])
        self.conv1 = nn.Conv2d(channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.Identity()
        self.fc = nn.Identity()
        self.out_dim = 8 * width

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64:  # layer1 follows the stem, which is `width` wide rather than torchvision's 64
            self.inplanes = self.width
        return super()._make_layer(block, planes * self.width // 64, blocks, stride, dilate)

    def feature_blocks(self, size: int) -> list[FeatureBlock]:
        """`layer3@8` (global average), `layer4@4` (2×2 average: the global one is `pool`) and `pool`,
        the penultimate features; resolutions are for `size` px inputs (here for 32 px)."""
        c3, c4 = 4 * self.width, 8 * self.width
        r3 = _halved(size, 2)  # a stride-2 3×3 convolution with padding 1 gives ceil(n / 2)
        r4 = _halved(r3, 1)
        return [
            FeatureBlock(f"layer3@{r3}", r3, c3, c3, "avg"),
            FeatureBlock(f"layer4@{r4}", r4, c4, 4 * c4, "avg2x2"),
            FeatureBlock("pool", r4, c4, c4, "avg"),
        ]

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The pooled outputs of `feature_blocks`, in one forward pass."""
        x = self.relu(self.bn1(self.conv1(x)))
        layer3 = self.layer3(self.layer2(self.layer1(x)))
        layer4 = self.layer4(layer3)
        return {
            f"layer3@{layer3.shape[-1]}": pool(layer3, "avg"),
            f"layer4@{layer4.shape[-1]}": pool(layer4, "avg2x2"),
            "pool": pool(layer4, "avg"),
        }


def _halved(size: int, times: int) -> int:
    for _ in range(times):
        size = (size + 1) // 2
    return size


def build_vit(
    *, channels: int, size: int, patch: int, width: int, depth: int, heads: int
) -> VisionTransformer:
    """A torchvision VisionTransformer for `channels`-channel `size` px images, without a classifier.

    The MLP is 4× the width, as in ViT and MAE; `width` must be a multiple of `heads`.
    """
    if size % patch != 0:
        raise ValueError(f"{size} px images do not split into {patch} px patches")
    if width % heads != 0:
        raise ValueError(f"width {width} is not a multiple of {heads} heads")
    vit = VisionTransformer(
        image_size=size,
        patch_size=patch,
        num_layers=depth,
        num_heads=heads,
        hidden_dim=width,
        mlp_dim=4 * width,
    )
    # torchvision's patch projection takes 3 channels: rebuilt for the dataset's.
    vit.conv_proj = nn.Conv2d(channels, width, kernel_size=patch, stride=patch)
    vit.heads = nn.Identity()
    return vit
