"""Student and teacher on an EfficientNet-Lite0 image encoder (ImageNet-initialised elsewhere).

* `EncoderStudent`: image-only. Lite0 (timm `efficientnet_lite0`, classifier removed) -> GeM
  pooling of its last feature map -> linear projection to `embed_dim` -> L2 norm. The projection
  starts semi-orthogonal, so an untrained student ranks like the encoder's GeM descriptor.
* `HybridTeacher`: the multi-modal CrossViT of models/crossvit.py whose branch-0 patch embedding
  is the encoder's stride-16 feature map (blocks 0-4, 112 channels) projected to the branch
  width, as ViT-hybrid does; branch 1 sees the 3D spatial tokens as before.

`freeze` is how many of the encoder's 7 stages (with its stem) keep their weights: their
parameters get no gradient and every batch norm keeps its running statistics (batches of 16-32
images would only add noise to ImageNet's). Like crossvit.py, this file imports nothing from
the project; ImageNet weights are loaded by mmcrossvit/train/weights.py (`load_imagenet_encoder`).
"""
from __future__ import annotations

from typing import Optional

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from .crossvit import Teacher

__all__ = ['EncoderStudent', 'HybridTeacher', 'GeM', 'lite0', 'STAGES', 'FEATURES']

STAGES = 7        # efficientnet_lite0's block stages
FEATURES = 1280   # width of its last feature map (conv_head)
STRIDE16 = 5      # stages 0-4 reach stride 16 (112 channels)


def lite0() -> nn.Module:
    """timm's efficientnet_lite0 with its classifier removed (random weights)."""
    return timm.create_model('efficientnet_lite0', pretrained=False, num_classes=0, global_pool='')


def _freeze(encoder: nn.Module, stages: int) -> None:
    if not 0 <= stages <= STAGES:
        raise ValueError(f"freeze={stages}: expected 0..{STAGES} encoder stages")
    if stages:
        for m in (encoder.conv_stem, encoder.bn1, *encoder.blocks[:stages]):
            m.requires_grad_(False)


def _bn_eval(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al.) with a learnable exponent."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean((-2, -1)).pow(1.0 / self.p)


class EncoderStudent(nn.Module):
    """Image-only: `forward(images)` -> (B, embed_dim) L2-normalised."""

    def __init__(self, img_size: int = 240, embed_dim: int = 1000, freeze: int = 4):
        super().__init__()
        if img_size <= 0 or img_size % 32:
            raise ValueError(f"img_size={img_size} must be a positive multiple of 32 (the encoder's stride)")
        self.encoder = lite0()
        self.pool = GeM()
        self.head = nn.Linear(FEATURES, embed_dim)
        nn.init.orthogonal_(self.head.weight)  # distances of the GeM descriptor kept at the start
        nn.init.zeros_(self.head.bias)
        _freeze(self.encoder, freeze)
        self.encoder.to(memory_format=torch.channels_last)  # depthwise convs: 1.5-1.7x faster on CPU
        self.config = dict(arch='student', backbone='lite0', img_size=img_size, embed_dim=embed_dim, freeze=freeze)

    def train(self, mode: bool = True):
        super().train(mode)
        _bn_eval(self)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encoder.forward_features(x.contiguous(memory_format=torch.channels_last))
        return F.normalize(self.head(self.pool(x)), dim=-1)


class _Stride16Embed(nn.Module):
    """The encoder's stride-16 map -> (B, tokens, dim): a 1x1 projection and a LayerNorm."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(112, dim, 1)
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(fmap).flatten(2).transpose(1, 2))


class HybridTeacher(Teacher):
    """Teacher (models/crossvit.py) with branch 0's patches from the encoder's stride-16 map:
    img_size / 16 squared image tokens. Same forward signature and output."""

    def __init__(self, img_size: int = 224, grid: int = 14, token_dim: int = 192, embed_dim: int = 1000,
                 freeze: int = 4, drop_path_rate: float = 0.0):
        if img_size <= 0 or img_size % 16:
            raise ValueError(f"img_size={img_size} must be a positive multiple of 16 (the encoder's stride-16 map)")
        super().__init__(img_size=img_size, grid=grid, token_dim=token_dim, embed_dim=embed_dim,
                         drop_path_rate=drop_path_rate, patch_size0=16)
        enc = lite0()
        enc.blocks = enc.blocks[:STRIDE16]
        enc.conv_head, enc.bn2 = nn.Identity(), nn.Identity()
        self.encoder = enc
        _freeze(self.encoder, min(freeze, STRIDE16))
        self.encoder.to(memory_format=torch.channels_last)
        self.patch_embed = nn.ModuleList([_Stride16Embed(self.embed_dim[0])])
        self.patch_embed[0].apply(self._init_weights)
        self.config = dict(arch='teacher', backbone='lite0', img_size=img_size, grid=grid, token_dim=token_dim,
                           embed_dim=embed_dim, freeze=freeze, drop_path_rate=drop_path_rate)

    def train(self, mode: bool = True):
        super().train(mode)
        _bn_eval(self.encoder)
        return self

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        x = enc.bn1(enc.conv_stem(images.contiguous(memory_format=torch.channels_last)))
        return self.patch_embed[0](enc.blocks(x))

    def forward_features(self, images: torch.Tensor, tokens: torch.Tensor,
                         valid: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
        return self._forward_branches(self.image_tokens(images), tokens, valid)
