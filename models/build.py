"""Build a student or teacher from its `.config`, whichever backbone: the CrossViT of
models/crossvit.py (the paper's) or the ImageNet encoder of models/encoder.py. Kept apart from both
so that neither model file imports the other's builder."""
from __future__ import annotations

import torch.nn as nn

from .crossvit import Student, Teacher
from .encoder import EncoderStudent, HybridTeacher

__all__ = ['BACKBONES', 'build_student', 'build_teacher', 'build_model']

BACKBONES = ('crossvit', 'lite0')  # crossvit: from scratch, the paper's shape; lite0: models/encoder.py


def _backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {', '.join(BACKBONES)}")


def build_student(img_size: int = 240, embed_dim: int = 1000, drop_path_rate: float = 0.0,
                  backbone: str = 'crossvit', freeze: int = 4) -> nn.Module:
    _backbone(backbone)
    if backbone == 'lite0':
        return EncoderStudent(img_size=img_size, embed_dim=embed_dim, freeze=freeze)
    return Student(img_size=img_size, embed_dim=embed_dim, drop_path_rate=drop_path_rate)


def build_teacher(img_size: int = 240, grid: int = 14, token_dim: int = 192, embed_dim: int = 1000,
                  drop_path_rate: float = 0.0, backbone: str = 'crossvit', freeze: int = 4) -> nn.Module:
    _backbone(backbone)
    if backbone == 'lite0':
        return HybridTeacher(img_size=img_size, grid=grid, token_dim=token_dim, embed_dim=embed_dim,
                             freeze=freeze, drop_path_rate=drop_path_rate)
    return Teacher(img_size=img_size, grid=grid, token_dim=token_dim, embed_dim=embed_dim,
                   drop_path_rate=drop_path_rate)


def build_model(arch: str, **kwargs) -> nn.Module:
    """Rebuild a model from its `.config`: `build_model(**model.config)`."""
    builders = {'student': build_student, 'teacher': build_teacher}
    if arch not in builders:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(builders)}")
    return builders[arch](**kwargs)
