"""Random views of plankton images, drawn per image but computed for the whole batch at once.

Why not lightly's or torchvision's transforms: lightly's view transforms (SimCLRTransform, …) are
PIL pipelines applied one image at a time, far too slow for a CPU budget, and torchvision's v2
transforms applied to a batched tensor draw one set of parameters for the whole batch, which would
give every image of a batch the same crop. So each augmentation here draws its parameters per image
from the trainer's generator (on the CPU, so a run is reproducible on any device) and applies them
as one batched tensor operation: a crop is one `affine_grid` + `grid_sample`, a blur one grouped
convolution. Parameters follow lightly's SimCLR/BYOL/DINO defaults, scaled to 32 px plankton:

- random resized crop, scale 0.6–1.0 (lightly: 0.08–1.0; a plankter fills its frame, and a crop of
  8 % of a 32 px image is a few blurry pixels), aspect ratio 3/4–4/3;
- a random one of the 8 flips and 90° rotations (`dihedral_augment`, shared with the DDPM
  trainer): plankton have no canonical orientation;
- brightness (multiplicative: the background stays black) and contrast, ±40 %, with probability
  0.8 (lightly's colour jitter without hue and saturation, meaningless on grayscale);
- Gaussian blur with probability 0.5, σ 0.1–0.8 px, 5-tap kernel ("light": lightly uses σ up to
  2 px on 224 px images).

Which method uses which view is in `SUPERVISED_VIEW`, `SSL_VIEW` and `MAE_VIEW` below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from plankdiff.diffusion.train import dihedral_augment


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.empty(n).uniform_(low, high, generator=generator)


def random_resized_crop(
    x: torch.Tensor, generator: torch.Generator, *, scale: tuple[float, float], ratio: tuple[float, float]
) -> torch.Tensor:
    """Per image: a crop of `scale` of the area and `ratio` aspect, inside the image, resized back.

    The crop's sides are clipped to the image, so extreme ratios at scale 1 are slightly smaller
    than asked rather than redrawn (torchvision redraws up to 10 times, then falls back to a centre crop).
    """
    n = x.shape[0]
    area = _uniform(n, *scale, generator)
    aspect = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator).exp()
    width, height = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)
    # Centres in [-1, 1] coordinates such that the crop stays inside the image.
    centre_x = _uniform(n, -1.0, 1.0, generator) * (1 - width)
    centre_y = _uniform(n, -1.0, 1.0, generator) * (1 - height)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = width, centre_x, height, centre_y
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def brightness_contrast(
    x: torch.Tensor, generator: torch.Generator, *, p: float, brightness: float, contrast: float
) -> torch.Tensor:
    """Per image, with probability `p`: scale by 1 ± `brightness`, then stretch about the image mean
    by 1 ± `contrast` (torchvision's `adjust_contrast` rule); values stay in [0, 1]."""
    n = x.shape[0]
    applied = torch.rand(n, generator=generator) < p
    gain = torch.where(applied, 1 + _uniform(n, -brightness, brightness, generator), 1.0)
    stretch = torch.where(applied, 1 + _uniform(n, -contrast, contrast, generator), 1.0)
    x = x * gain.view(-1, 1, 1, 1).to(x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * stretch.view(-1, 1, 1, 1).to(x) + mean).clamp(0.0, 1.0)


def gaussian_blur(
    x: torch.Tensor, generator: torch.Generator, *, p: float, sigma: tuple[float, float], kernel_size: int = 5
) -> torch.Tensor:
    """Per image, with probability `p`: a separable Gaussian blur of σ drawn from `sigma` (reflect padding)."""
    n, channels, height, width = x.shape
    applied = (torch.rand(n, generator=generator) < p).nonzero().flatten()
    sigmas = _uniform(n, *sigma, generator)[applied]
    if len(applied) == 0:
        return x
    radius = kernel_size // 2
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    taps = torch.exp(-(offsets**2) / (2 * sigmas[:, None] ** 2))
    taps = (taps / taps.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0).to(x)
    chosen = x[applied.to(x.device)].reshape(1, len(applied) * channels, height, width)
    chosen = F.pad(chosen, (radius, radius, radius, radius), mode="reflect")
    groups = len(applied) * channels
    chosen = F.conv2d(chosen, taps.view(groups, 1, 1, kernel_size), groups=groups)
    chosen = F.conv2d(chosen, taps.view(groups, 1, kernel_size, 1), groups=groups)
    out = x.clone()
    out[applied.to(x.device)] = chosen.view(len(applied), channels, height, width)
    return out


@dataclass(frozen=True)
class ViewAugment:
    """One random view of every image of a uint8 batch, as float in [-1, 1] (the DDPM's input range).

    Every random number is drawn whether or not an augmentation fires, so the generator advances by
    the same amount for every batch of a given size: runs are reproducible and resume exactly.
    """

    crop_scale: tuple[float, float] | None = (0.6, 1.0)  # None: no crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    dihedral: bool = True
    jitter_p: float = 0.0
    brightness: float = 0.4
    contrast: float = 0.4
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 0.8)

    def __call__(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not (pixels.dtype == torch.uint8 and pixels.ndim == 4):
            raise TypeError(f"expected a uint8 batch [B, C, H, W], got {pixels.dtype} {tuple(pixels.shape)}")
        # Views are made in float32 even inside the trainer's bf16 autocast on GPUs.
        with torch.autocast(pixels.device.type, enabled=False):
            x = pixels.float().div_(255.0)
            if self.crop_scale is not None:
                x = random_resized_crop(x, generator, scale=self.crop_scale, ratio=self.crop_ratio)
            if self.dihedral:
                x = dihedral_augment(x, generator)
            if self.jitter_p > 0:
                x = brightness_contrast(
                    x, generator, p=self.jitter_p, brightness=self.brightness, contrast=self.contrast
                )
            if self.blur_p > 0:
                x = gaussian_blur(x, generator, p=self.blur_p, sigma=self.blur_sigma)
            return x.mul_(2.0).sub_(1.0)

    def describe(self) -> str:
        parts = []
        if self.crop_scale is not None:
            parts.append(f"crop {self.crop_scale[0]:g}–{self.crop_scale[1]:g}")
        if self.dihedral:
            parts.append("flips+rot90")
        if self.jitter_p > 0:
            parts.append(f"brightness/contrast ±{self.brightness:g}/±{self.contrast:g} p={self.jitter_p:g}")
        if self.blur_p > 0:
            parts.append(f"blur σ {self.blur_sigma[0]:g}–{self.blur_sigma[1]:g} p={self.blur_p:g}")
        return ", ".join(parts) or "none"


# The supervised baseline of ../shared/notes/reference-runs.md: orientation only.
SUPERVISED_VIEW = ViewAugment(crop_scale=None)
# SimCLR, BYOL and DINO (its two global views): the same view for all three, so they differ only in
# their objective.
SSL_VIEW = ViewAugment(jitter_p=0.8, blur_p=0.5)
# MAE: crop and orientation only, as in the MAE paper (masking is its augmentation).
MAE_VIEW = ViewAugment()
