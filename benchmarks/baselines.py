"""Baseline retrieval networks and counting helpers shared by the benchmark scripts.

The two baselines of the paper's efficiency table, rebuilt from their published architectures
(random weights: only their size and cost matter here):

* NetVLAD (Arandjelovic et al.): VGG16 up to conv5_3 + ReLU (the last max-pool removed), a
  NetVLAD layer with 64 clusters (1x1-conv soft assignment, learned centroids, intra- and L2
  normalisation) and a 64*512 -> 4096 PCA-whitening layer, followed by L2 normalisation.
* AP-GeM (Revaud et al.): ResNet-101 without avgpool/fc, generalised-mean pooling (learned p)
  and a 2048 -> 2048 whitening FC, followed by L2 normalisation.

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode`, which counts matmul-like
ops only (conv, mm/addmm/bmm, attention kernels it knows) as 2 x multiply-adds. On CPU, PyTorch's
fused scaled-dot-product attention kernel is not one FlopCounterMode counts, so transformer
attention must be switched to timm's explicit q @ k.T / attn @ v path before counting
(`explicit_attention`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch.utils.flop_counter import FlopCounterMode


class NetVLADLayer(nn.Module):
    """NetVLAD pooling: soft-assign local features to K clusters, sum residuals, normalise."""

    def __init__(self, clusters: int = 64, dim: int = 512):
        super().__init__()
        self.assign = nn.Conv2d(dim, clusters, kernel_size=1, bias=True)
        self.centroids = nn.Parameter(torch.randn(clusters, dim) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=1)                              # per-location descriptor norm
        a = self.assign(x).flatten(2).softmax(dim=1)           # (B, K, HW)
        f = x.flatten(2)                                       # (B, D, HW)
        vlad = torch.bmm(a, f.transpose(1, 2))                 # (B, K, D) sum_n a_kn f_n
        vlad = vlad - a.sum(dim=2, keepdim=True) * self.centroids[None]
        vlad = F.normalize(vlad, dim=2)                        # intra-normalisation
        return F.normalize(vlad.flatten(1), dim=1)


class NetVLADNet(nn.Module):
    def __init__(self, clusters: int = 64, pca_dim: int = 4096):
        super().__init__()
        features = torchvision.models.vgg16(weights=None).features
        self.backbone = features[:-1]                          # up to conv5_3 + ReLU, no last pool
        self.pool = NetVLADLayer(clusters, 512)
        self.pca = nn.Linear(clusters * 512, pca_dim)          # PCA projection + whitening

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.pca(self.pool(self.backbone(x))), dim=1)


class GeM(nn.Module):
    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(p))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class APGeMNet(nn.Module):
    def __init__(self, dim: int = 2048):
        super().__init__()
        r = torchvision.models.resnet101(weights=None)
        self.backbone = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3, r.layer4)
        self.pool = GeM()
        self.whiten = nn.Linear(2048, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.whiten(F.normalize(self.pool(self.backbone(x)), dim=1)), dim=1)


def build_netvlad() -> NetVLADNet:
    return NetVLADNet().eval()


def build_apgem() -> APGeMNet:
    return APGeMNet().eval()


def explicit_attention(model: nn.Module) -> int:
    """Switch timm attention modules to the explicit matmul path; returns how many were switched."""
    n = 0
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
            n += 1
    return n


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, *inputs: torch.Tensor) -> tuple[int, dict[str, dict[str, int]]]:
    """(total FLOPs, {module name: {op: FLOPs}}) of one no-grad forward, FlopCounterMode's convention
    (2 x multiply-adds). Inputs may live on the meta device (shapes only, nothing computed)."""
    with torch.no_grad(), FlopCounterMode(display=False, depth=None) as fc:
        model(*inputs)
    per_module = {name: {str(op): int(v) for op, v in ops.items()} for name, ops in fc.get_flop_counts().items()}
    return int(fc.get_total_flops()), per_module


def module_flops(per_module: dict[str, dict[str, int]], name: str) -> int:
    """FLOPs under one module of `count_flops`'s breakdown (its name as FlopCounterMode writes it)."""
    return sum(per_module.get(name, {}).values())


def pct(counted: float, paper: float) -> float:
    """Signed difference of a counted figure from the paper's, in % of the paper's."""
    return 100.0 * (counted - paper) / paper
