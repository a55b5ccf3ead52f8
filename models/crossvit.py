"""Student and teacher CrossViTs for retrieval-based visual localization.

Both are timm `CrossVit` models with crossvit_tiny_240 geometry (branch widths 96/192, patch
sizes 12/16, three multi-scale blocks of depth (1, 4, 0), 3 heads, MLP ratio 4) whose classifier
heads emit an `embed_dim` descriptor. `forward` returns the two branch heads averaged (timm's
`forward_head`) and L2-normalised.

* `Student`: image-only, what runs on queries.
* `Teacher`: branch 0 sees the image; branch 1 sees per-patch 3D spatial tokens instead of
  image patches (a G x G grid plus a camera token, encoded elsewhere).

Every model carries `.config`, the keyword arguments that rebuild it (`models/build.py:
build_model(**config)`), so a checkpoint can record its architecture. This module imports nothing
from the project: reading weights is mmcrossvit/train/weights.py's job (`load_model`,
`load_init`, `load_pretrained_timm`), and bad shapes here raise ValueError.
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.crossvit import CrossVit, scale_image

__all__ = ['Student', 'Teacher', 'SpatialTokenEmbed']

# timm's crossvit_tiny_240, minus image size and classes
TINY_ARGS = dict(
    patch_size=(12, 16),
    embed_dim=(96, 192),
    depth=((1, 4, 0),) * 3,
    num_heads=(3, 3),
    mlp_ratio=(4., 4., 1.),
)
_NORM = partial(nn.LayerNorm, eps=1e-6)  # the norm timm's CrossVit uses everywhere


def _scale_to(img_size: int, target: int) -> float:
    # timm floors img_size * scale; half a pixel of slack keeps float error from dropping one
    return (target + 0.5) / img_size


def student_branch_sizes(img_size: int) -> tuple[int, int]:
    """(branch-0, branch-1) input sizes; branch 1 sees img_size * 224/240 as in timm."""
    if img_size <= 0 or (img_size * 224) % 240:
        raise ValueError(f"img_size={img_size}: img_size * 224/240 must be a whole number of pixels "
                         f"(img_size must be a multiple of 15; the student needs a multiple of 120, "
                         f"e.g. 120, 240, 360)")
    s0, s1 = img_size, img_size * 224 // 240
    if s0 % 12 or s1 % 16:
        raise ValueError(f"img_size={img_size}: branch sizes ({s0}, {s1}) must be multiples of the "
                         f"patch sizes (12, 16); use a multiple of 120, e.g. 120, 240, 360")
    return s0, s1


class Student(CrossVit):
    """Image-only CrossViT-tiny; `forward(images)` -> (B, embed_dim) L2-normalised."""

    def __init__(self, img_size: int = 240, embed_dim: int = 1000, drop_path_rate: float = 0.0):
        s0, s1 = student_branch_sizes(img_size)
        super().__init__(img_size=img_size, img_scale=(1.0, _scale_to(img_size, s1)),
                         num_classes=embed_dim, drop_path_rate=drop_path_rate, **TINY_ARGS)
        assert [s[0] for s in self.img_size_scaled] == [s0, s1], self.img_size_scaled
        self.config = dict(arch='student', img_size=img_size, embed_dim=embed_dim,
                           drop_path_rate=drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(super().forward(x), dim=-1)


class SpatialTokenEmbed(nn.Module):
    """Spatial tokens -> branch-1 width: patch tokens and camera token each get Linear + LayerNorm.

    Patches without a 3D point (valid False) get their input zeroed and a learned `missing`
    embedding added, so whatever the encoder wrote there cannot leak in.
    """

    def __init__(self, grid: int, token_dim: int, dim: int):
        super().__init__()
        self.grid = grid
        self.token_dim = token_dim
        self.proj = nn.Linear(token_dim, dim)
        self.norm = _NORM(dim)
        self.cam_proj = nn.Linear(token_dim, dim)
        self.cam_norm = _NORM(dim)
        self.missing = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, tokens: torch.Tensor, valid: Optional[torch.Tensor] = None):
        B = tokens.shape[0]
        n = self.grid * self.grid
        if tokens.ndim != 3 or tokens.shape[1:] != (1 + n, self.token_dim):
            raise ValueError(f"spatial tokens must be (B, 1 + {self.grid}*{self.grid}, {self.token_dim}) "
                             f"= (B, {1 + n}, {self.token_dim}) [camera token first, then patches "
                             f"row-major], got {tuple(tokens.shape)}")
        tokens = tokens.to(self.proj.weight.dtype)
        cam, pts = tokens[:, :1], tokens[:, 1:]
        if valid is None:
            return self.cam_norm(self.cam_proj(cam)), self.norm(self.proj(pts))
        if valid.shape != (B, n):
            raise ValueError(f"valid mask must be (B, {n}) = {(B, n)}, got {tuple(valid.shape)}")
        keep = valid.to(torch.bool).unsqueeze(-1)
        pts = self.norm(self.proj(pts * keep)) + self.missing * (~keep)
        return self.cam_norm(self.cam_proj(cam)), pts


class Teacher(CrossVit):
    """Two-modality CrossViT-tiny: branch 0 = image patches, branch 1 = 3D spatial tokens.

    `forward(images, tokens, valid=None)` -> (B, embed_dim) L2-normalised, where `tokens` is
    (B, 1 + grid*grid, token_dim) (index 0 camera token, then patch tokens row-major) and `valid`
    an optional bool (B, grid*grid) mask, False where a patch sees no 3D point. Branch 1 keeps
    timm's class token, learned position embedding (for a grid x grid layout, i.e. a 16*grid
    "image"), blocks, norm and head; only its patch embedding is replaced by `token_embed`.
    """

    def __init__(self, img_size: int = 240, grid: int = 14, token_dim: int = 192,
                 embed_dim: int = 1000, drop_path_rate: float = 0.0, patch_size0: int = 12):
        if img_size <= 0 or img_size % patch_size0:
            raise ValueError(f"img_size={img_size} must be a positive multiple of the branch-0 patch size {patch_size0}")
        if grid <= 0 or token_dim <= 0:
            raise ValueError(f"grid={grid} and token_dim={token_dim} must be positive")
        s1 = 16 * grid
        super().__init__(img_size=img_size, img_scale=(1.0, _scale_to(img_size, s1)),
                         num_classes=embed_dim, drop_path_rate=drop_path_rate,
                         **{**TINY_ARGS, 'patch_size': (patch_size0, 16)})
        assert [s[0] for s in self.img_size_scaled] == [img_size, s1], self.img_size_scaled
        # branch 1 has no pixels: drop its conv so its (unused) weights never enter checkpoints
        self.patch_embed = nn.ModuleList([self.patch_embed[0]])
        self.token_embed = SpatialTokenEmbed(grid, token_dim, self.embed_dim[1])
        self.token_embed.apply(self._init_weights)
        trunc_normal_(self.token_embed.missing, std=.02)
        self.grid = grid
        self.config = dict(arch='teacher', img_size=img_size, grid=grid, token_dim=token_dim,
                           embed_dim=embed_dim, drop_path_rate=drop_path_rate)

    @torch.jit.ignore
    def no_weight_decay(self):
        return super().no_weight_decay() | {'token_embed.missing'}

    def forward_features(self, images: torch.Tensor, tokens: torch.Tensor,
                         valid: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
        return self._forward_branches(self.patch_embed[0](scale_image(images, self.img_size_scaled[0], self.crop_scale)),
                                      tokens, valid)

    def _forward_branches(self, x0: torch.Tensor, tokens: torch.Tensor, valid: Optional[torch.Tensor]) -> list[torch.Tensor]:
        """Branch-0 patch tokens (B, n, width 0) and the spatial tokens through both branches."""
        B = x0.shape[0]
        if tokens.shape[0] != B:
            raise ValueError(f"{B} images but {tokens.shape[0]} token sets")
        x0 = torch.cat((self.cls_token_0.expand(B, -1, -1), x0), dim=1) + self.pos_embed_0
        cam, pts = self.token_embed(tokens, valid)
        # the camera pose conditions branch 1 through its class token, which cross-attends to branch 0
        x1 = torch.cat((self.cls_token_1.expand(B, -1, -1) + cam, pts), dim=1) + self.pos_embed_1
        xs = [self.pos_drop(x0), self.pos_drop(x1)]
        for blk in self.blocks:
            xs = blk(xs)
        return [norm(x) for norm, x in zip(self.norm, xs)]

    def forward_intermediates(self, *args, **kwargs):
        raise NotImplementedError("Teacher takes spatial tokens; use forward_features(images, tokens, valid)")

    def forward(self, images: torch.Tensor, tokens: torch.Tensor,
                valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        return F.normalize(self.forward_head(self.forward_features(images, tokens, valid)), dim=-1)
