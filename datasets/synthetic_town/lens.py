"""The camera model: pycolmap's projection (COLMAP conventions, pixel centres at +0.5), so the
renderer and everything that reads the dataset back share one implementation, and the per-pixel
rays the tracer casts."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pycolmap

from mmcrossvit.colmap_io import CameraSpec

# The tracer's screen-space culling assumes rays whose normalized coordinates change monotonically
# across the image (perspective lenses, mild radial distortion); other models are untested here.
SUPPORTED_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL")


def colmap_camera(camera: CameraSpec) -> pycolmap.Camera:
    if camera.model not in SUPPORTED_MODELS:
        raise ValueError(f"the renderer supports {', '.join(SUPPORTED_MODELS)}, not {camera.model}")
    return camera.to_pycolmap()


def distort(camera: CameraSpec, xy: np.ndarray) -> np.ndarray:
    """Normalized (undistorted) camera coordinates (..., 2) -> pixels (..., 2)."""
    xy = np.asarray(xy, np.float64)
    flat = xy.reshape(-1, 2)
    uv = colmap_camera(camera).img_from_cam(np.ascontiguousarray(np.c_[flat, np.ones(len(flat))]))
    return uv.reshape(xy.shape)


def undistort(camera: CameraSpec, uv: np.ndarray) -> np.ndarray:
    """Pixels (..., 2) -> normalized undistorted camera coordinates (..., 2)."""
    uv = np.asarray(uv, np.float64)
    xy = colmap_camera(camera).cam_from_img(np.ascontiguousarray(uv.reshape(-1, 2)))
    return xy.reshape(uv.shape)


def scaled(camera: CameraSpec, s: float, width: int, height: int) -> CameraSpec:
    """The same lens on a `width` x `height` sensor: focal lengths and principal point times `s`."""
    cam = colmap_camera(camera)
    idx = set(cam.focal_length_idxs()) | set(cam.principal_point_idxs())
    return CameraSpec(camera.model, width, height, tuple(v * s if i in idx else v for i, v in enumerate(camera.params)))


@dataclass
class Rays:
    xn: np.ndarray            # (H, W) float32 normalized x of each (sub)pixel's ray
    yn: np.ndarray
    col_lo: np.ndarray        # per column min / max of xn (monotone), for screen-space culling
    col_hi: np.ndarray
    row_lo: np.ndarray
    row_hi: np.ndarray
    focal_px: float           # focal length in (sub)pixels, for texture footprints


@functools.lru_cache(maxsize=8)
def camera_rays(camera: CameraSpec, ss: int = 1) -> Rays:
    """Undistorted ray of every subpixel at `ss` samples per pixel and axis.

    Subpixel (I, J) sits at image coordinate ((J + 0.5) / ss, (I + 0.5) / ss), so averaging
    ss x ss blocks (INTER_AREA) centres each output pixel at (j + 0.5, i + 0.5) as COLMAP expects.
    """
    W, H = camera.width * ss, camera.height * ss
    u = (np.arange(W) + 0.5) / ss
    v = (np.arange(H) + 0.5) / ss
    uu, vv = np.meshgrid(u, v)
    xy = undistort(camera, np.stack([uu.ravel(), vv.ravel()], -1))
    xn = xy[:, 0].reshape(H, W).astype(np.float32)
    yn = xy[:, 1].reshape(H, W).astype(np.float32)
    cam = colmap_camera(camera)
    return Rays(xn, yn,
                np.minimum.accumulate(xn.min(0)[::-1])[::-1], np.maximum.accumulate(xn.max(0)),
                np.minimum.accumulate(yn.min(1)[::-1])[::-1], np.maximum.accumulate(yn.max(1)),
                0.5 * (cam.focal_length_x + cam.focal_length_y) * ss)
