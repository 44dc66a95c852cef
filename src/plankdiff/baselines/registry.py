"""Baseline methods by name. A method is one module of this package with one `@register("name")`
class deriving from `Method`; the package imports every such module, so adding a method is adding
a file.

A `Method` is an `nn.Module` holding everything its objective trains (backbone, heads, momentum
copies, loss buffers such as DINO's centre), so one `state_dict` is the whole checkpoint. The
trainer drives every method through three calls:

- `training_step(pixels, generator, labels=, progress=)`: uint8 images in, scalar loss out (the
  method makes its own views from the generator);
- `backbone_features(x)`: the frozen features of images in [-1, 1], one pooled tensor per
  `feature_blocks()` entry, which the feature store and the linear probe consume like diffusion pairs;
- `head_logits(features)`: a method's own classifier, if it has one (only `supervised`).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import ClassVar

import torch
from torch import nn

from plankdiff.baselines.augment import ViewAugment
from plankdiff.baselines.backbones import FeatureBlock, ResNet18

METHODS: dict[str, type[Method]] = {}
# Modules of this package that hold infrastructure rather than a method.
_INFRASTRUCTURE = {"registry", "backbones", "augment", "train", "extract", "cli"}


def register(name: str):
    """Class decorator: make a `Method` subclass available as `name`."""

    def decorate(cls: type[Method]) -> type[Method]:
        if not issubclass(cls, Method):  # programming errors, not user input
            raise TypeError(f"{cls.__name__} must derive from Method to be registered")
        if name in METHODS:
            raise RuntimeError(f"method {name!r} registered twice ({METHODS.get(name)} and {cls})")
        cls.name = name
        METHODS[name] = cls
        return cls

    return decorate


def load_methods() -> dict[str, type[Method]]:
    """Import every method module of the package (idempotent); returns `METHODS`."""
    package = importlib.import_module("plankdiff.baselines")
    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in _INFRASTRUCTURE and not module.name.startswith("_"):
            importlib.import_module(f"plankdiff.baselines.{module.name}")
    return METHODS


def get_method(name: str) -> type[Method]:
    methods = load_methods()
    if name not in methods:
        raise ValueError(f"unknown baseline method {name!r}; choose one of: {', '.join(sorted(methods))}")
    return methods[name]


class Method(nn.Module):
    """Base of every baseline: the defaults below are each method's training recipe."""

    name: ClassVar[str] = ""
    uses_labels: ClassVar[bool] = False
    backbone_name: ClassVar[str] = "ResNet-18"
    default_width: ClassVar[int] = 64
    lr: ClassVar[float] = 2e-3
    weight_decay: ClassVar[float] = 0.05
    betas: ClassVar[tuple[float, float]] = (0.9, 0.999)
    views: ClassVar[ViewAugment]

    def __init__(self, *, channels: int, size: int, width: int, n_classes: int | None = None):
        super().__init__()
        if self.uses_labels and not (n_classes and n_classes >= 2):
            raise ValueError(f"{self.name} trains a classifier: it needs n_classes >= 2")
        self.channels, self.size, self.width, self.n_classes = channels, size, width, n_classes

    @classmethod
    def size_problem(cls, size: int) -> str | None:
        """Why the method cannot take `size` px images, or None (checked by `plankdiff run --dry-run`)."""
        return None

    @classmethod
    def width_problem(cls, width: int) -> str | None:
        """Why the method's network cannot be `width` wide, or None (checked when an experiment loads)."""
        return None

    @classmethod
    def build(
        cls, *, channels: int, size: int, n_classes: int | None = None, width: int | None = None
    ) -> Method:
        """The method for `channels`-channel `size` px images; `width` defaults to the method's own."""
        return cls(channels=channels, size=size, width=width or cls.default_width, n_classes=n_classes)

    def training_step(
        self,
        pixels: torch.Tensor,
        generator: torch.Generator,
        *,
        labels: torch.Tensor | None = None,
        progress: float | None = None,
    ) -> torch.Tensor:
        """The loss on one uint8 batch [B, C, S, S]. `progress` is the fraction of the time budget
        spent (None without a budget), for schedules such as the momentum of a teacher network."""
        raise NotImplementedError

    def feature_network(self) -> nn.Module:
        """The network `backbone_features` reads: its parameter count is the method's 'size'."""
        raise NotImplementedError

    def feature_blocks(self) -> list[FeatureBlock]:
        raise NotImplementedError

    def backbone_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pooled features of images `x` in [-1, 1], keyed by `feature_blocks()` names."""
        raise NotImplementedError

    def head_logits(self, features: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The method's own classifier on its features, or None when it has none."""
        return None

    def parameter_counts(self) -> dict[str, int]:
        return {
            "backbone": sum(p.numel() for p in self.feature_network().parameters()),
            "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in self.parameters()),
        }


class ResNetMethod(Method):
    """A method whose features are those of a ResNet-18, `feature_network()` (by default `self.backbone`)."""

    def __init__(self, *, channels: int, size: int, width: int, n_classes: int | None = None):
        super().__init__(channels=channels, size=size, width=width, n_classes=n_classes)
        self.backbone = ResNet18(channels=channels, width=width)

    def feature_network(self) -> ResNet18:
        return self.backbone

    def feature_blocks(self) -> list[FeatureBlock]:
        return self.feature_network().feature_blocks(self.size)

    def backbone_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.feature_network().features(x)
