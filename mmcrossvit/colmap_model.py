"""COLMAP models: the pose reference written as a text model, and what the pipeline reads back
from any model (text or binary, through pycolmap): cameras and poses, 2D keypoints with their
3D point ids, observations and 3D points. Errors name the folder and what is missing."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .colmap_io import CameraSpec, check_camera
from .errors import DataError
from .geometry import Pose
from .storage import write_text


def write_colmap_text(folder: str | Path, cameras: dict[str, CameraSpec], poses: dict[str, Pose]) -> None:
    """A COLMAP text model with one camera per image and no 3D points (the pose reference)."""
    folder = Path(folder)
    cam_lines, img_lines = [], []
    for i, (name, pose) in enumerate(poses.items(), start=1):
        cam_lines.append(f"{i} {cameras[name].line()}\n")
        q, t = pose.qvec, pose.t
        img_lines.append(f"{i} " + " ".join(f"{x:.12g}" for x in (*q, *t)) + f" {i} {name}\n\n")
    write_text(folder / "cameras.txt", "# CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]\n" + "".join(cam_lines))
    write_text(folder / "images.txt",
               "# IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME\n# POINTS2D[] as (X, Y, POINT3D_ID)\n"
               + "".join(img_lines))
    write_text(folder / "points3D.txt", "# POINT3D_ID X Y Z R G B ERROR TRACK[]\n")


COLMAP_MODEL_FILES = ("cameras", "images", "points3D")  # what COLMAP needs; rigs/frames are optional


def colmap_model_format(folder: str | Path) -> str:
    """'bin' or 'txt': the format of the COLMAP model in `folder` (binary preferred, as COLMAP
    reads it). A missing folder, or one without a complete cameras/images/points3D set in either
    format, is a DataError naming the folder and the missing files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "COLMAP model folder not found (expected cameras, images and points3D "
                                "as .bin or .txt in it)")
    missing = {ext: [f"{f}.{ext}" for f in COLMAP_MODEL_FILES if not (folder / f"{f}.{ext}").is_file()]
               for ext in ("bin", "txt")}
    for ext in ("bin", "txt"):
        if not missing[ext]:
            return ext
    # the format the folder was meant to be in: the one with more of its files present
    ext = min(("bin", "txt"), key=lambda e: len(missing[e]))
    if len(missing[ext]) == len(COLMAP_MODEL_FILES):
        raise DataError(folder, "not a COLMAP model: expected cameras, images and points3D as .bin "
                                "(cameras.bin, images.bin, points3D.bin) or as .txt; none is there")
    raise DataError(folder, f"incomplete COLMAP {'binary' if ext == 'bin' else 'text'} model: missing "
                            f"{', '.join(missing[ext])} (COLMAP needs cameras, images and points3D)")


def _text_line(path: Path, first: str) -> int | None:
    """Line (1-based) of a COLMAP text file whose first field is `first`, to point errors at it."""
    try:
        with open(path) as f:
            for i, raw in enumerate(f, start=1):
                if raw.split()[:1] == [first]:
                    return i
    except (OSError, UnicodeDecodeError):
        pass
    return None


def read_colmap_cameras_poses(folder: str | Path) -> tuple[dict[str, CameraSpec], dict[str, Pose]]:
    """Cameras and poses of the registered images of a COLMAP model (text or binary, with or
    without the rigs/frames files of COLMAP >= 3.12)."""
    import pycolmap
    folder = Path(folder)
    fmt = colmap_model_format(folder)
    try:
        rec = pycolmap.Reconstruction(str(folder))
    except Exception as e:  # pycolmap raises plain RuntimeError/ValueError with COLMAP's message
        raise DataError(folder, f"could not read the COLMAP model: {e}") from None
    cams, poses = {}, {}
    for im in rec.images.values():
        if not im.has_pose:
            continue
        cam = rec.cameras[im.camera_id]
        cams[im.name] = check_camera(
            CameraSpec.from_pycolmap(cam),
            folder / f"cameras.{fmt}", _text_line(folder / "cameras.txt", str(im.camera_id)) if fmt == "txt" else None,
            f"camera {im.camera_id} of image {im.name!r}")
        T = im.cam_from_world()
        # COLMAP keeps a zero quaternion as read, and its rotation matrix is then the identity:
        # a silently wrong database pose, so it is refused here (as the NVM reader does)
        q = np.asarray(T.rotation.quat, dtype=np.float64)
        if not (np.all(np.isfinite(q)) and np.all(np.isfinite(T.translation)) and np.linalg.norm(q) > 1e-8):
            where = folder / f"images.{fmt}"
            raise DataError(where, f"image {im.name!r}: the pose needs a non-zero, finite quaternion and a finite "
                                   f"translation, got q (w x y z) = {np.round(q[[3, 0, 1, 2]], 6).tolist()}, "
                                   f"t = {np.round(np.asarray(T.translation), 6).tolist()}",
                            _text_line(where, str(im.image_id)) if fmt == "txt" else None)
        poses[im.name] = Pose.from_rigid3d(T)
    return cams, poses


def read_images_points2d(folder: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{image name: (xy (M, 2), point3D id (M,), -1 if untriangulated)} from a COLMAP text model,
    one entry per keypoint in keypoint order; parsed with numpy."""
    path = Path(folder) / "images.txt"
    if not path.exists():
        raise DataError(path, "missing: expected a COLMAP text model")
    with open(path) as f:
        lines = [(i, ln) for i, ln in enumerate(f, start=1) if not ln.startswith("#")]
    if len(lines) % 2:
        raise DataError(path, "expected two lines per image (pose line, then points line)")
    images: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for k in range(0, len(lines), 2):
        lineno, head = lines[k][0], lines[k][1].split()
        if len(head) < 10:
            raise DataError(path, "expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME'", lineno)
        try:
            pts = np.array(lines[k + 1][1].split(), dtype=np.float64).reshape(-1, 3)
        except ValueError:
            raise DataError(path, "expected 'X Y POINT3D_ID' triplets", lines[k + 1][0]) from None
        images[" ".join(head[9:])] = (pts[:, :2], pts[:, 2].astype(np.int64))
    return images


def read_model_observations(folder: str | Path
                            ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    """Triangulated observations of a COLMAP *text* model (fast at Aachen scale).

    Returns ({image name: (keypoint xy (M, 2), point3D ids (M,)) of its triangulated keypoints},
    point ids (P,), xyz (P, 3)).
    """
    folder = Path(folder)
    images = {n: (xy[ids >= 0], ids[ids >= 0]) for n, (xy, ids) in read_images_points2d(folder).items()}
    pids, xyz = read_points3d(folder)
    return images, pids, xyz


def read_points3d(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Point ids (P,) and xyz (P, 3) of a COLMAP text model."""
    path = Path(folder) / "points3D.txt"
    if not path.exists():
        raise DataError(path, "missing: expected a COLMAP text model")
    pids, xyz = [], []
    with open(path) as f:
        for lineno, ln in enumerate(f, start=1):
            if ln.startswith("#") or not ln.strip():
                continue
            t = ln.split(maxsplit=4)
            try:
                pids.append(int(t[0]))
                xyz.append((float(t[1]), float(t[2]), float(t[3])))
            except (ValueError, IndexError):
                raise DataError(path, "expected 'POINT3D_ID X Y Z R G B ERROR TRACK[]'", lineno) from None
    return np.asarray(pids, dtype=np.int64), np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
