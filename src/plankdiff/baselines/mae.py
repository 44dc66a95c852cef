"""`mae`: masked autoencoder (He et al. 2022): a ViT encodes a random 25 % of the patches, a light
decoder reconstructs the pixels of the other 75 %.

timm is not installed, so lightly's timm-based modules (`MaskedVisionTransformerTIMM`,
`MAEDecoderTIMM`) are out; the torchvision path of lightly is used instead, as in lightly's
torchvision MAE example: `MaskedVisionTransformerTorchvision` around a torchvision
`VisionTransformer` (4 px patches, width 192, depth 6, 3 heads: 65 tokens at 32 px; fixed 2-D
sin-cos position embeddings), lightly's torchvision `MAEDecoder` (width 128, depth 2, 4 heads), and
`lightly.models.utils` for `random_token_mask` (mask ratio 0.75), `repeat_token`, `set_at_index`,
`get_at_index` and `patchify`.

The reconstruction target is the raw patch, not the per-patch-normalised one the MAE paper prefers:
on NDSB at 32 px half of the 4×4 patches are flat background and another fifth vary by a grey level
or two, which normalisation would blow up into unit-variance noise to be predicted.
`random_token_mask` draws from torch's global generator, which the trainer seeds and checkpoints.
Views: `MAE_VIEW` (crop 0.6–1 and orientation; no photometric changes). AdamW β₂ = 0.95, lr 1.5e-3,
weight decay 0.05 (MAE's, with the lr raised for a short run; untuned).

Features: the mean patch token after blocks 4 and 6 (`block4`, `block6`; the reconstruction loss
never reads the class token), and `pool`, the mean patch token after the final layer norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.models import utils
from lightly.models.modules import MAEDecoder, MaskedVisionTransformerTorchvision
from torch import nn

from plankdiff.baselines.augment import MAE_VIEW
from plankdiff.baselines.backbones import FeatureBlock, build_vit
from plankdiff.baselines.registry import Method, register

PATCH = 4
DEPTH = 6
HEADS = 3
DECODER_DEPTH = 2
DECODER_HEADS = 4
MASK_RATIO = 0.75


def decoder_width(width: int) -> int:
    """128 at width 192; a multiple of DECODER_HEADS for widths of 3·2^k (k >= 1)."""
    return 2 * width // 3


@register("mae")
class MAE(Method):
    backbone_name = "ViT (patch 4, depth 6)"
    default_width = 192
    lr = 1.5e-3
    weight_decay = 0.05
    betas = (0.9, 0.95)
    views = MAE_VIEW

    @classmethod
    def size_problem(cls, size: int) -> str | None:
        return f"{size} px images do not split into {PATCH} px patches" if size % PATCH else None

    @classmethod
    def width_problem(cls, width: int) -> str | None:
        if width % HEADS:
            return f"the ViT's width must be a multiple of its {HEADS} heads"
        if decoder_width(width) % DECODER_HEADS:
            return (
                f"its decoder width {decoder_width(width)} (2/3 of it) must split into {DECODER_HEADS} heads"
            )
        return None

    def __init__(self, *, channels: int, size: int, width: int, n_classes: int | None = None):
        super().__init__(channels=channels, size=size, width=width, n_classes=n_classes)
        problem = self.width_problem(width)
        if problem:
            raise ValueError(f"width {width}: {problem}")
        vit = build_vit(channels=channels, size=size, patch=PATCH, width=width, depth=DEPTH, heads=HEADS)
        self.backbone = MaskedVisionTransformerTorchvision(vit=vit)
        self.sequence_length = vit.seq_length
        decoder = decoder_width(width)
        self.decoder = MAEDecoder(
            seq_length=vit.seq_length,
            num_layers=DECODER_DEPTH,
            num_heads=DECODER_HEADS,
            embed_input_dim=width,
            hidden_dim=decoder,
            mlp_dim=4 * decoder,
            out_dim=PATCH**2 * channels,
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder))
        nn.init.normal_(self.mask_token, std=0.02)
        self.feature_layers = (DEPTH - 2, DEPTH)

    def training_step(self, pixels, generator, *, labels=None, progress=None) -> torch.Tensor:
        images = self.views(pixels, generator)
        batch = images.shape[0]
        idx_keep, idx_mask = utils.random_token_mask(
            size=(batch, self.sequence_length), mask_ratio=MASK_RATIO, device=images.device
        )
        encoded = self.backbone.encode(images=images, idx_keep=idx_keep)
        tokens = utils.repeat_token(self.mask_token, (batch, self.sequence_length))
        tokens = utils.set_at_index(tokens, idx_keep, self.decoder.embed(encoded).type_as(tokens))
        predicted = self.decoder.predict(utils.get_at_index(self.decoder.decode(tokens), idx_mask))
        # idx_mask counts the class token at 0; patchify's patches do not have it.
        target = utils.get_at_index(utils.patchify(images, PATCH), idx_mask - 1)
        return F.mse_loss(predicted.float(), target.float())

    def feature_network(self) -> nn.Module:
        return self.backbone

    def feature_blocks(self) -> list[FeatureBlock]:
        grid = self.size // PATCH
        return [
            FeatureBlock(f"block{i}", grid, self.width, self.width, "mean-token") for i in self.feature_layers
        ] + [FeatureBlock("pool", grid, self.width, self.width, "mean-token")]

    def backbone_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # The steps of MaskedVisionTransformerTorchvision.encode, keeping the wanted blocks' outputs.
        encoder = self.backbone.vit.encoder
        tokens = encoder.dropout(self.backbone.preprocess(images=x))
        out = {}
        for index, layer in enumerate(encoder.layers, start=1):
            tokens = layer(tokens)
            if index in self.feature_layers:
                out[f"block{index}"] = tokens[:, 1:].float().mean(dim=1)
        out["pool"] = encoder.ln(tokens)[:, 1:].float().mean(dim=1)
        return out
