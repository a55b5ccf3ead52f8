"""Readers and writers of the text formats the pipeline exchanges.

- intrinsics lists: "<name> <COLMAP model> <w> <h> <params...>" (Aachen's query files and
  3D-models/database_intrinsics.txt);
- VisualSFM NVM (Aachen's aachen_cvpr2018_db.nvm): camera lines "<name> <f> <qw qx qy qz> <cx cy cz>
  <radial> 0" with the rotation world-to-camera and the camera centre, then a point section;
- pose files "<name> qw qx qy qz tx ty tz" (ground truth, and the benchmark's results file);
- hloc pairs files "<name0> <name1>";
(COLMAP models: mmcrossvit/colmap_model.py.)

Every reader raises `DataError` naming the file and line on malformed input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import DataError
from .geometry import Pose
from .storage import write_text

# COLMAP camera models and their parameter counts (src/colmap/sensor/models.h).
CAMERA_MODELS = {
    "SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 4, "RADIAL": 5, "OPENCV": 8,
    "OPENCV_FISHEYE": 8, "FULL_OPENCV": 12, "FOV": 5, "SIMPLE_RADIAL_FISHEYE": 4,
    "RADIAL_FISHEYE": 5, "THIN_PRISM_FISHEYE": 12, "RAD_TAN_THIN_PRISM_FISHEYE": 16,
    "SIMPLE_DIVISION": 4, "DIVISION": 5, "SIMPLE_FISHEYE": 3, "FISHEYE": 4,
}

# models whose parameters start f, cx, cy (the others: fx, fy, cx, cy)
SINGLE_FOCAL_MODELS = ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "FOV",
                       "SIMPLE_DIVISION", "DIVISION", "SIMPLE_FISHEYE")


@dataclass(frozen=True)
class CameraSpec:
    model: str
    width: int
    height: int
    params: tuple[float, ...]

    @classmethod
    def from_pycolmap(cls, cam) -> "CameraSpec":
        return cls(cam.model.name, int(cam.width), int(cam.height), tuple(float(v) for v in cam.params))

    def to_pycolmap(self, camera_id: int = 1):
        import pycolmap
        return pycolmap.Camera(model=self.model, width=self.width, height=self.height,
                               params=list(self.params), camera_id=camera_id)

    @property
    def K(self) -> np.ndarray:
        """Pinhole part of the calibration (distortion ignored)."""
        p = self.params
        if self.model in SINGLE_FOCAL_MODELS:
            f, cx, cy = p[0], p[1], p[2]
            fx = fy = f
        else:
            fx, fy, cx, cy = p[:4]
        return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])

    def line(self) -> str:
        return f"{self.model} {self.width} {self.height} " + " ".join(_fmt(v) for v in self.params)


@dataclass
class NVMCamera:
    name: str
    focal: float
    pose: Pose
    radial: float = 0.0


@dataclass
class NVMModel:
    cameras: list[NVMCamera]
    # each point: xyz (3,), rgb (3,) and observations [(camera index, feature index, x, y)],
    # x, y measured from the image centre as NVM does.
    points_xyz: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    points_rgb: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.uint8))
    observations: list[list[tuple[int, int, float, float]]] = field(default_factory=list)


def _fmt(v: float) -> str:
    return f"{float(v):.12g}"


def read_text(path: str | Path, missing: str = "file not found") -> str:
    """A text file's contents; a missing or binary file is a DataError naming it."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(path, missing) from None
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        line, col = data.count(b"\n", 0, e.start) + 1, e.start - data.rfind(b"\n", 0, e.start)
        raise DataError(path, f"not UTF-8 text: byte {data[e.start]:#04x} at column {col} "
                              f"(save the file as UTF-8)", line) from None


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Numbered, whitespace-split lines, skipping blanks and '#' comments."""
    for i, raw in enumerate(read_text(path).splitlines(), start=1):
        s = raw.strip()
        if s and not s.startswith("#"):
            yield i, s.split()


def _floats(path, lineno, tokens, what) -> list[float]:
    try:
        vals = [float(t) for t in tokens]
    except ValueError:
        raise DataError(path, f"expected numbers for {what}, got {' '.join(tokens)!r}", lineno) from None
    if not all(math.isfinite(v) for v in vals):
        raise DataError(path, f"non-finite value in {what}: {' '.join(tokens)!r}", lineno)
    return vals


def _int(path, lineno, token, what) -> int:
    try:
        return int(token)
    except ValueError:
        raise DataError(path, f"expected an integer for {what}, got {token!r}", lineno) from None


def check_name(path, lineno, name: str) -> str:
    """Image names are relative paths that stay inside the images folder."""
    if name.startswith(("/", "\\")) or ".." in Path(name).parts or ":" in name:
        raise DataError(path, f"image name {name!r} must be a relative path inside the images folder", lineno)
    return name


# ---------------------------------------------------------------- intrinsics lists
def parse_camera(path, lineno, tokens: list[str]) -> CameraSpec:
    if len(tokens) < 3:
        raise DataError(path, "expected '<COLMAP model> <width> <height> <params...>'", lineno)
    model = tokens[0]
    if model not in CAMERA_MODELS:
        raise DataError(path, f"unknown camera model {model!r}; expected one of {', '.join(CAMERA_MODELS)}", lineno)
    w, h = _int(path, lineno, tokens[1], "width"), _int(path, lineno, tokens[2], "height")
    if w <= 0 or h <= 0:
        raise DataError(path, f"image size must be positive, got {w}x{h}", lineno)
    params = _floats(path, lineno, tokens[3:], "camera parameters")
    if len(params) != CAMERA_MODELS[model]:
        raise DataError(path, f"{model} takes {CAMERA_MODELS[model]} parameters, got {len(params)}", lineno)
    return check_camera(CameraSpec(model, w, h, tuple(params)), path, lineno)


def check_camera(cam: CameraSpec, path, lineno: int | None = None, what: str = "") -> CameraSpec:
    """A camera the solvers can use: finite parameters, positive focal lengths and the principal
    point inside the image. A negative focal turns the solved pose by 180° and a zero one
    silently loses every match, so both are refused where the file is read."""
    who = f"{what}: " if what else ""
    if not all(math.isfinite(v) for v in cam.params):
        raise DataError(path, f"{who}non-finite camera parameter in {cam.line()!r}", lineno)
    K = cam.K
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        f = f"{K[0, 0]:g}" if K[0, 0] == K[1, 1] else f"{K[0, 0]:g}, {K[1, 1]:g}"
        raise DataError(path, f"{who}focal length {f} must be positive ({cam.line()})", lineno)
    if not (0 <= K[0, 2] <= cam.width and 0 <= K[1, 2] <= cam.height):
        raise DataError(path, f"{who}principal point ({K[0, 2]:g}, {K[1, 2]:g}) lies outside the "
                              f"{cam.width}x{cam.height} image ({cam.line()})", lineno)
    return cam


def read_intrinsics(path: str | Path) -> dict[str, CameraSpec]:
    cams: dict[str, CameraSpec] = {}
    for lineno, tok in _lines(path):
        name = check_name(path, lineno, tok[0])
        if name in cams:
            raise DataError(path, f"image {name!r} is listed twice", lineno)
        cams[name] = parse_camera(path, lineno, tok[1:])
    return cams


def write_intrinsics(path: str | Path, cameras: dict[str, CameraSpec]) -> None:
    write_text(path, "".join(f"{n} {c.line()}\n" for n, c in cameras.items()))


# ---------------------------------------------------------------- pose files
def read_poses(path: str | Path) -> dict[str, Pose]:
    poses: dict[str, Pose] = {}
    for lineno, tok in _lines(path):
        if len(tok) != 8:
            raise DataError(path, f"expected '<name> qw qx qy qz tx ty tz', got {len(tok)} fields", lineno)
        v = _floats(path, lineno, tok[1:], "pose")
        q = np.array(v[:4])
        if abs(np.linalg.norm(q) - 1.0) > 1e-3:
            raise DataError(path, f"quaternion {tok[1:5]} is not unit length", lineno)
        if tok[0] in poses:
            raise DataError(path, f"image {tok[0]!r} is listed twice", lineno)
        poses[tok[0]] = Pose.from_qt(q, v[4:])
    return poses


def write_poses(path: str | Path, poses: dict[str, Pose]) -> None:
    lines = []
    for name, p in poses.items():
        q, t = p.qvec, p.t
        lines.append(name + " " + " ".join(f"{x:.10g}" for x in (*q, *t)) + "\n")
    write_text(path, "".join(lines))


# ---------------------------------------------------------------- pairs
def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    pairs = []
    for lineno, tok in _lines(path):
        if len(tok) != 2:
            raise DataError(path, f"expected '<name0> <name1>', got {len(tok)} fields", lineno)
        pairs.append((tok[0], tok[1]))
    return pairs


def write_pairs(path: str | Path, pairs) -> None:
    write_text(path, "".join(f"{a} {b}\n" for a, b in pairs))


def _section_count(path: Path, it, what: str, after: int, optional: bool = False):
    """(count, its line) of an NVM section: one non-negative integer on a line; (None, after)
    at the end of the file when the section is optional."""
    try:
        lineno, tok = next(it)
    except StopIteration:
        if optional:
            return None, after
        raise DataError(path, f"missing the {what} count after the header", after) from None
    if len(tok) != 1:
        raise DataError(path, f"expected the {what} count, got {' '.join(tok)!r}", lineno)
    n = _int(path, lineno, tok[0], f"the {what} count")
    if n < 0:
        raise DataError(path, f"negative {what} count {n}", lineno)
    return n, lineno


def _section_line(path: Path, it, i: int, n: int, what: str, count_line: int):
    try:
        return next(it)
    except StopIteration:
        raise DataError(path, f"file ends after {i} of {n} {what}", count_line) from None


# ---------------------------------------------------------------- NVM
def read_nvm(path: str | Path, skip_points: bool = False) -> NVMModel:
    path = Path(path)
    it = _lines(path)
    try:
        lineno, tok = next(it)
    except StopIteration:
        raise DataError(path, "empty file; expected an NVM_V3 header") from None
    if tok[0] != "NVM_V3":
        raise DataError(path, f"expected the NVM_V3 header, got {tok[0]!r}", lineno)
    rest = tok[1:]  # optional calibration after the header (NVM_V3 FixedK ...) is ignored
    n, count_line = _section_count(path, it, "camera", lineno)
    cams = []
    for i in range(n):
        lineno, tok = _section_line(path, it, i, n, "cameras", count_line)
        if len(tok) < 10:
            raise DataError(path, "expected '<name> <focal> <qw qx qy qz> <cx cy cz> <radial> 0'", lineno)
        v = _floats(path, lineno, tok[1:10], "camera")
        if v[0] <= 0:
            raise DataError(path, f"focal length {v[0]:g} must be positive", lineno)
        q = np.array(v[1:5])
        if np.linalg.norm(q) < 1e-8:
            raise DataError(path, "zero quaternion", lineno)
        pose = Pose.from_center(Pose.from_qt(q / np.linalg.norm(q), np.zeros(3)).R, v[5:8])
        cams.append(NVMCamera(check_name(path, lineno, tok[0]), v[0], pose, v[8]))
    del rest
    model = NVMModel(cams)
    if skip_points:
        return model
    npts, count_line = _section_count(path, it, "point", lineno, optional=True)
    if npts is None:
        return model  # no point section at all
    xyz, rgb, obs = [], [], []  # lists, not preallocated: a corrupt count must not allocate
    for i in range(npts):
        lineno, tok = _section_line(path, it, i, npts, "points", count_line)
        if len(tok) < 7:
            raise DataError(path, "expected '<x y z> <r g b> <n> (<img> <feat> <x> <y>)*n'", lineno)
        xyz.append(_floats(path, lineno, tok[:3], "point position"))
        rgb.append(np.clip(_floats(path, lineno, tok[3:6], "point colour"), 0, 255))
        m = _int(path, lineno, tok[6], "the measurement count")
        if len(tok) != 7 + 4 * m:
            raise DataError(path, f"point has {m} measurements, so {7 + 4 * m} fields; got {len(tok)}", lineno)
        o = []
        for j in range(m):
            a = tok[7 + 4 * j: 11 + 4 * j]
            ci, fi = _int(path, lineno, a[0], "camera index"), _int(path, lineno, a[1], "feature index")
            if not 0 <= ci < n:
                raise DataError(path, f"measurement refers to camera {ci}, but there are {n}", lineno)
            x, y = _floats(path, lineno, a[2:], "measurement")
            o.append((ci, fi, x, y))
        obs.append(o)
    model.points_xyz = np.array(xyz, dtype=np.float64).reshape(-1, 3)
    model.points_rgb = np.array(rgb).reshape(-1, 3).astype(np.uint8)
    model.observations = obs
    return model


def write_nvm(path: str | Path, model: NVMModel) -> None:
    out = ["NVM_V3\n\n", f"{len(model.cameras)}\n"]
    for c in model.cameras:
        q, ctr = c.pose.qvec, c.pose.center
        out.append(f"{c.name} {c.focal:.10g} " + " ".join(f"{x:.10g}" for x in (*q, *ctr))
                   + f" {c.radial:.10g} 0\n")
    out.append(f"\n{len(model.points_xyz)}\n")
    for X, col, o in zip(model.points_xyz, model.points_rgb, model.observations):
        meas = " ".join(f"{ci} {fi} {x:.6g} {y:.6g}" for ci, fi, x, y in o)
        out.append(" ".join(f"{v:.10g}" for v in X) + " " + " ".join(str(int(v)) for v in col)
                   + f" {len(o)}" + (f" {meas}" if meas else "") + "\n")
    out.append("\n0\n")  # NVM's empty model terminator (Aachen's file has it too)
    write_text(path, "".join(out))
