"""Image preprocessing shared by training and retrieval, and the photometric night simulation.

Images are resized to a square `size` x `size` (aspect not kept, as the authors do) and
normalised with ImageNet statistics (what timm's CrossViT expects).
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch

from .images import read_image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def load_resized(path: str | Path, size: int) -> np.ndarray:
    """uint8 RGB (size, size, 3)."""
    img = read_image(path)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> normalised float (3, H, W)."""
    x = (img.astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def night_simulation(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A photometric day-to-night change on a uint8 RGB image: global darkening with a gamma
    curve, a warm or cool colour cast, a few coloured light pools, blur and sensor noise.
    Stands in for the paper's CycleGAN night renderings when none are provided."""
    h, w = img.shape[:2]
    x = img.astype(np.float32) / 255.0
    x = x ** rng.uniform(1.6, 2.6) * rng.uniform(0.25, 0.5)
    cast = np.array([rng.uniform(0.9, 1.3), rng.uniform(0.8, 1.05), rng.uniform(0.6, 1.0)], np.float32)
    x = x * cast
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(rng.integers(1, 4)):  # street-lamp-like pools of light
        cx, cy, r = rng.uniform(0, w), rng.uniform(0.3 * h, h), rng.uniform(0.15, 0.5) * max(h, w)
        colour = np.array([1.0, rng.uniform(0.6, 0.9), rng.uniform(0.3, 0.6)], np.float32)
        pool = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
        x = x + rng.uniform(0.2, 0.6) * pool * colour * (0.3 + img.astype(np.float32) / 255.0)
    k = int(rng.integers(0, 2)) * 2 + 1
    if k > 1:
        x = cv2.GaussianBlur(x, (k, k), 0)
    x = x + rng.normal(0, rng.uniform(0.01, 0.04), x.shape).astype(np.float32)
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


class Geometry(NamedTuple):
    """Geometric augmentation of a square training image (the student's and the image-only
    model's; the teacher's tokens are tied to its patch grid, so it takes none).

    crop_scale     smallest area fraction of a random crop (1: no crop); its aspect ratio is
                   drawn between 3:4 and 4:3, and the crop is stretched back to the square
    portrait_prob  probability of a portrait view instead: a 3:4 window of the full height of a
                   4:3 landscape image, stretched to the square as a portrait query is
    roll           largest in-plane rotation in degrees (camera roll)
    """
    crop_scale: float = 1.0
    portrait_prob: float = 0.0
    roll: float = 0.0

    @property
    def active(self) -> bool:
        return self.crop_scale < 1.0 or self.portrait_prob > 0.0 or self.roll > 0.0


PORTRAIT_WIDTH = 0.5625  # a 3:4 window of a 4:3 image: (3/4) / (4/3) of its width


def geometric_view(img: np.ndarray, rng: np.random.Generator, geo: Geometry) -> np.ndarray:
    """A random crop (or portrait window), rotated by a small roll, resampled to the same square
    size; the border reflects. Draws nothing when `geo` is inactive."""
    if not geo.active:
        return img
    h, w = img.shape[:2]
    if rng.random() < geo.portrait_prob:
        cw, ch = PORTRAIT_WIDTH, 1.0
    elif geo.crop_scale >= 1.0:
        cw = ch = 1.0
    else:
        area = rng.uniform(geo.crop_scale, 1.0)
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        cw, ch = min(1.0, np.sqrt(area * aspect)), min(1.0, np.sqrt(area / aspect))
    cx, cy = rng.uniform(cw / 2, 1 - cw / 2), rng.uniform(ch / 2, 1 - ch / 2)
    angle = np.deg2rad(rng.uniform(-geo.roll, geo.roll))
    # source points of the output's top-left, top-right and bottom-left corners
    c, s = np.cos(angle), np.sin(angle)
    half = np.array([[-cw / 2, -ch / 2], [cw / 2, -ch / 2], [-cw / 2, ch / 2]])
    src = (half @ np.array([[c, s], [-s, c]]) + [cx, cy]) * [w, h]
    dst = np.array([[0, 0], [w, 0], [0, h]], dtype=np.float32)
    m = cv2.getAffineTransform(src.astype(np.float32), dst)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def cyclegan_path(image_path: Path) -> Path:
    """`<name>_cyclegan.<ext>` beside an image: a user-provided night rendering of it."""
    return image_path.with_name(f"{image_path.stem}_cyclegan{image_path.suffix}")


def hflip(img: np.ndarray) -> np.ndarray:
    """Mirror an (H, W, 3) image left-right."""
    return np.ascontiguousarray(img[:, ::-1])


def hflip_tokens(tokens: torch.Tensor, valid: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror the G x G patch grid of (1 + G*G, D) spatial tokens and its (G*G,) mask left-right,
    so each token stays with the pixels of its (mirrored) patch; the camera token is kept."""
    cam, pts = tokens[:1], tokens[1:]
    pts = pts.reshape(grid, grid, -1).flip(1).reshape(grid * grid, -1)
    return torch.cat([cam, pts]), valid.reshape(grid, grid).flip(1).reshape(-1)


def color_jitter(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Photometric only (brightness, contrast, saturation, each scaled by 1 +- strength), so the
    pixels stay where the spatial tokens say they are."""
    if strength <= 0:
        return img
    x = img.astype(np.float32)
    b, c, s = rng.uniform(1 - strength, 1 + strength, 3)
    x = x * b
    x = (x - x.mean()) * c + x.mean()
    gray = x.mean(axis=2, keepdims=True)
    x = (x - gray) * s + gray
    return np.clip(x, 0, 255).astype(np.uint8)
