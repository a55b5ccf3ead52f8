"""Reading images robustly: one place decides how a file becomes pixels.

EXIF orientation is applied (as a photo viewer shows it), 16-bit and grayscale files are
converted to 8-bit, and an unreadable file raises DataError naming it.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .errors import DataError


def read_image(path: str | Path, grayscale: bool = False) -> np.ndarray:
    """uint8 image, RGB (H, W, 3) or gray (H, W)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image not found")
    data = np.fromfile(path, dtype=np.uint8)
    if data[:2].tobytes() == b"\xff\xd8":  # JPEG: always 8-bit; these flags apply EXIF orientation
        img = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR)
    else:  # PNG/TIFF may be 16-bit or carry alpha
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH) if data.size else None
    if img is None:
        raise DataError(path, "cannot decode image (corrupt, truncated or not an image)")
    if img.dtype == np.uint16:  # scale 16-bit to 8-bit rather than clip
        img = (img.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if grayscale:
        return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
