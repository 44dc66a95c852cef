"""Where features are read from a UNet2DModel, under canonical names.

Every down block, the mid block and every up block is hooked at its last sub-module before the
resampler (the last attention layer if it has one, else the last ResNet), so each feature map
is taken at the resolution the block computes at. Names carry stage and that resolution:
`enc1@32` (first down block, 32×32 maps), `mid@8`, `dec2@16` (second up block). With
`sub_blocks=True` every ResNet and attention layer is hooked too: `dec2@16.res0`, `dec2@16.attn1`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DModel


@dataclass(frozen=True)
class Block:
    name: str
    module: str  # dotted path inside the UNet
    channels: int
    resolution: int


def _hook_points(unet: UNet2DModel, sub_blocks: bool) -> list[tuple[str, str]]:
    points = []
    levels = len(unet.down_blocks)
    stages = [("enc", i, f"down_blocks.{i}", b) for i, b in enumerate(unet.down_blocks)]
    stages.append(("mid", levels - 1, "mid_block", unet.mid_block))
    stages += [("dec", levels - 1 - j, f"up_blocks.{j}", b) for j, b in enumerate(unet.up_blocks)]
    size = unet.config.sample_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    for stage, level, path, block in stages:
        resolution = size // 2**level
        index = int(path.split(".")[1]) + 1 if stage != "mid" else None
        name = f"{stage}{index}@{resolution}" if index else f"mid@{resolution}"
        attentions = [a for a in (getattr(block, "attentions", None) or []) if a is not None]
        if stage == "mid":
            points.append((name, path))
        else:
            last = (
                f"{path}.attentions.{len(attentions) - 1}"
                if attentions
                else f"{path}.resnets.{len(block.resnets) - 1}"
            )
            points.append((name, last))
        if sub_blocks:
            for r in range(len(block.resnets)):
                points.append((f"{name}.res{r}", f"{path}.resnets.{r}"))
            for a in range(len(attentions)):
                points.append((f"{name}.attn{a}", f"{path}.attentions.{a}"))
    return points


@torch.inference_mode()
def list_blocks(unet: UNet2DModel, *, sub_blocks: bool = False) -> list[Block]:
    """Blocks in forward order, with channel counts and resolutions read off one dummy forward pass."""
    points = _hook_points(unet, sub_blocks)
    modules = dict(unet.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [
        modules[path].register_forward_hook(
            lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(_first_tensor(out).shape))
        )
        for name, path in points
    ]
    size = unet.config.sample_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    device = next(unet.parameters()).device
    try:
        unet(
            torch.zeros(1, unet.config.in_channels, size, size, device=device),
            torch.tensor([1], device=device),
        )
    finally:
        for handle in handles:
            handle.remove()
    return [Block(name, path, shapes[name][1], shapes[name][2]) for name, path in points]


def _first_tensor(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]
