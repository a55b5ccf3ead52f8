"""Training losses: the teacher's contrastive loss and the student's embedding-transfer loss."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_EPS = 1e-12  # keeps sqrt differentiable where two embeddings coincide


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """Soft-label contrastive loss over pairs (a_i, b_i).

    With d_i = ||a_i - b_i|| and y_i in [0, 1] (positive weight, e.g. the 3D-box IoU of the pair;
    0 for negatives):

        loss = mean_i( y_i * d_i^2 / 2 + (1 - y_i) * max(0, margin - d_i)^2 / 2 ),  margin = 0.5.

    a, b: (B, E) L2-normalised embeddings (so d lies in [0, 2]); y: (B,).
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a and b must both be (B, E), got {tuple(a.shape)} and {tuple(b.shape)}")
    y = y.to(a.dtype).reshape(-1)
    if y.shape[0] != a.shape[0]:
        raise ValueError(f"y must hold one weight per pair ({a.shape[0]}), got {y.shape[0]}")
    d2 = (a - b).pow(2).sum(dim=1)
    d = d2.clamp_min(_EPS).sqrt()
    return (y * d2 / 2 + (1 - y) * F.relu(margin - d).pow(2) / 2).mean()


def _pairwise_dist(x: torch.Tensor) -> torch.Tensor:
    sq = x.pow(2).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2 * x @ x.t()
    return d2.clamp_min(_EPS).sqrt()


def relaxed_contrastive_loss(student: torch.Tensor, teacher: torch.Tensor,
                             sigma: float = 1.0, delta: float = 1.0) -> torch.Tensor:
    """Relaxed contrastive loss of "Embedding Transfer with Label Relaxation" (Kim et al., CVPR 2021).

    The teacher's pairwise similarities are relaxed labels, w_ij = exp(-||t_i - t_j||^2 / sigma)
    (no gradient to the teacher). Student distances are scale-free: d_ij = ||s_i - s_j|| / mean_{k!=l}
    ||s_k - s_l||. Then, over the B(B-1) ordered pairs i != j:

        loss = mean_{i!=j}( w_ij * d_ij^2 + (1 - w_ij) * max(0, delta - d_ij)^2 ),

    sigma = 1, delta = 1 by default. student: (B, E_s), teacher: (B, E_t), B >= 2.
    """
    B = student.shape[0]
    if B < 2 or teacher.shape[0] != B:
        raise ValueError(f"need >= 2 matching student/teacher rows, got {B} and {teacher.shape[0]}")
    off = ~torch.eye(B, dtype=torch.bool, device=student.device)
    with torch.no_grad():
        w = torch.exp(-_pairwise_dist(teacher.float()).pow(2) / sigma)[off]
    d = _pairwise_dist(student)[off]
    d = d / d.mean()
    w = w.to(d.dtype)
    return (w * d.pow(2) + (1 - w) * F.relu(delta - d).pow(2)).mean()


def calibrated_sigma(positive_d2: torch.Tensor) -> float:
    """A kernel width from the teacher's own distances: w = 1/2 at the median squared distance
    of positive pairs (images sharing 3D points), so relaxed labels separate near from far
    whatever the spread of the teacher's space (sigma = 1 assumes the spread of Kim et al.'s)."""
    if positive_d2.numel() == 0:
        raise ValueError("no positive pairs to calibrate the kernel width on")
    return float(positive_d2.float().median().clamp_min(1e-6) / math.log(2.0))


def embedding_regression_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean_i(1 - cos(s_i, t_i)): each image's student embedding regresses onto the teacher's own
    (same size). A dense target per image, where the relaxed loss only ranks pairs."""
    if student.shape != teacher.shape:
        raise ValueError(f"regression needs the teacher's embedding size: student {tuple(student.shape)}, "
                         f"teacher {tuple(teacher.shape)}")
    return (1 - F.cosine_similarity(student, teacher.to(student.dtype), dim=1)).mean()
