"""One device rule for every step: `auto` is CUDA when torch sees a GPU, else the CPU."""
from __future__ import annotations

import torch

CHOICES = ("auto", "cpu", "cuda")
HELP = "auto: CUDA when available, else CPU (results do not depend on it)"


def pick(device: str = "auto") -> torch.device:
    """The torch device for `device` ('auto', 'cpu', 'cuda' or 'cuda:N'); a clear error when
    CUDA is asked for and absent."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {device} but no CUDA device is available")
    return dev


def sift_device(device: str = "auto"):
    """pycolmap's device for SIFT extraction: CUDA only with a CUDA build of pycolmap
    (the `pycolmap-cuda12` wheel) and a visible GPU; else the CPU extractor."""
    import pycolmap
    want_cuda = pick(device).type == "cuda"
    if want_cuda and getattr(pycolmap, "has_cuda", False):
        return pycolmap.Device.cuda
    return pycolmap.Device.cpu
