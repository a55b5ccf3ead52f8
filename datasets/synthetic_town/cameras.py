"""Where the cameras go: database views walking the streets, query views at novel positions."""
from __future__ import annotations

import math

import numpy as np

from mmcrossvit.colmap_io import CameraSpec
from mmcrossvit.geometry import Pose

from .lens import scaled
from .scene import Scene
from .town import Layout
from .trace import SKY, trace

DB_FOCAL = 0.8            # database focal length, in units of image width (~64 deg horizontal FOV)


def rotation_from_angles(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """World-to-camera rotation looking along heading `yaw` (radians from +x toward +y), tilted
    up by `pitch` and rolled by `roll` about the optical axis; camera x right, y down, z forward."""
    fwd = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch)])
    R = Pose.look_at(np.zeros(3), fwd).R
    cr, sr = math.cos(roll), math.sin(roll)
    return np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1.0]]) @ R


def street_segments(lay: Layout):
    """Inner streets as (start xy, unit direction, length); cameras move along these."""
    ex, ey = lay.extent
    sw = lay.street_width
    segs = []
    for x in lay.x_streets[1:-1]:
        segs.append((np.array([x, sw]), np.array([0.0, 1.0]), ey - 2 * sw))
    for y in lay.y_streets[1:-1]:
        segs.append((np.array([sw, y]), np.array([1.0, 0.0]), ex - 2 * sw))
    if not segs:  # a single block: walk the ring road instead
        for x in lay.x_streets:
            segs.append((np.array([x, 0.0]), np.array([0.0, 1.0]), ey))
        for y in lay.y_streets:
            segs.append((np.array([0.0, y]), np.array([1.0, 0.0]), ex))
    return segs


def _view_ok(scene: Scene, camera: CameraSpec, pose: Pose) -> bool:
    """A coarse depth render rejects views of a blank wall at arm's length or mostly sky/ground."""
    s = 12.0 / camera.width
    small = scaled(camera, s, max(int(camera.width * s), 4), max(int(camera.height * s), 3))
    depth, sid, _, _ = trace(scene, small, pose, 1)
    facade = (sid >= 0).mean()
    sky = (sid == SKY).mean()
    close = (depth < 3.0).mean()
    return facade >= 0.3 and sky <= 0.45 and close <= 0.2


def sample_view(scene: Scene, rng, segs, t: float, camera: CameraSpec, query: bool):
    """A pose at arc length t along the concatenated streets, with a plausible heading."""
    lengths = np.array([s[2] for s in segs])
    cum = np.concatenate([[0.0], np.cumsum(lengths)])
    for attempt in range(40):
        tt = t if attempt < 20 else rng.uniform(0, cum[-1])
        k = int(np.clip(np.searchsorted(cum, tt, "right") - 1, 0, len(segs) - 1))
        start, direction, _ = segs[k]
        lateral = np.array([-direction[1], direction[0]])
        max_off = scene.layout.street_width / 2 - (1.2 if query else 2.0)
        off = rng.uniform(-max_off, max_off)
        xy = start + direction * (tt - cum[k]) + lateral * off
        centre = np.array([xy[0], xy[1], rng.normal(1.6, 0.08 if not query else 0.12)])
        along = math.atan2(direction[1], direction[0])
        mode = rng.random()
        if mode < 0.25:
            yaw = along + rng.normal(0, 0.18 if not query else 0.3)
        elif mode < 0.5:
            yaw = along + math.pi + rng.normal(0, 0.18 if not query else 0.3)
        else:
            # toward a facade, preferably the one across the street
            side = -np.sign(off) if rng.random() < 0.75 and off != 0 else rng.choice([-1.0, 1.0])
            base = along + (0 if rng.random() < 0.5 else math.pi)
            ang = rng.uniform(math.radians(35), math.radians(90))
            yaw = base + side * ang * (1 if base == along else -1)
        pitch = math.radians(np.clip(rng.normal(6, 4) if not query else rng.normal(6, 6), -8, 22))
        roll = math.radians(rng.normal(0, 1.5 if not query else 3.0))
        pose = Pose.from_center(rotation_from_angles(yaw, pitch, roll), centre)
        if _view_ok(scene, camera, pose):
            return pose
    return pose


def db_camera(p: dict) -> CameraSpec:
    w, h = p["width"], p["height"]
    return CameraSpec("SIMPLE_RADIAL", w, h, (DB_FOCAL * w, w / 2, h / 2, 0.0))


def query_camera(rng, p: dict) -> CameraSpec:
    w, h = p["width"], p["height"]
    if rng.random() < p["portrait_fraction"]:
        w, h = h, w
    f = rng.uniform(p["query_focal_min"], p["query_focal_max"]) * max(w, h)
    k = rng.uniform(-p["max_distortion"], p["max_distortion"])
    return CameraSpec("SIMPLE_RADIAL", w, h, (round(f, 4), w / 2, h / 2, round(k, 6)))


def plan_cameras(scene: Scene, seed: int):
    """Database and query cameras: [(name, camera, pose, night)], deterministic from `seed`."""
    p = scene.params
    segs = street_segments(scene.layout)
    total = sum(s[2] for s in segs)
    rng = np.random.default_rng([seed, 21])
    plan = []
    n_db = p["num_db"]
    spacing = total / max(n_db, 1)
    cam = db_camera(p)
    for i in range(n_db):
        t = (i + 0.5 + rng.uniform(-0.3, 0.3)) * spacing
        plan.append((f"db/{i:04d}.jpg", cam, sample_view(scene, rng, segs, t, cam, False), False))
    db_xy = np.array([pl[2].center[:2] for pl in plan]).reshape(-1, 2)
    rng = np.random.default_rng([seed, 22])
    for cond, n in (("day", p["num_day"]), ("night", p["num_night"])):
        for i in range(n):
            qcam = query_camera(rng, p)
            for _ in range(50):  # novel positions: at least a metre from every database camera
                pose = sample_view(scene, rng, segs, rng.uniform(0, total), qcam, True)
                if len(db_xy) == 0 or np.min(np.linalg.norm(db_xy - pose.center[:2], axis=1)) > 1.0:
                    break
            plan.append((f"query/{cond}/synth/{cond}_{i:04d}.jpg", qcam, pose, cond == "night"))
    return plan


