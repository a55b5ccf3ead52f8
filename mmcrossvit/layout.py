"""The dataset layout (Aachen Day-Night's, which any user dataset follows) and its validation.

    <dataset>/images/images_upright/db/...            database images (any sub-folders)
    <dataset>/images/images_upright/query/...         query images
    <dataset>/queries/*_queries_with_intrinsics.txt   "<name> <COLMAP model> <w> <h> <params...>"
    <dataset>/3D-models/aachen_cvpr2018_db.nvm        database poses (NVM) plus
    <dataset>/3D-models/database_intrinsics.txt       their intrinsics
      - or -
    <dataset>/reference/                              COLMAP model (text or binary) with db poses
    <dataset>/ground_truth/query_poses.txt            optional, "<name> qw qx qy qz tx ty tz"

Image names are relative to images/images_upright/.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .colmap_io import (CameraSpec, NVMCamera, NVMModel, read_colmap_cameras_poses, read_intrinsics,
                        read_nvm, read_poses, write_colmap_text, write_intrinsics, write_nvm, write_poses)
from .errors import DataError
from .geometry import Pose

IMAGES = Path("images/images_upright")
NVM = Path("3D-models/aachen_cvpr2018_db.nvm")
DB_INTRINSICS = Path("3D-models/database_intrinsics.txt")
REFERENCE = Path("reference")
GT_POSES = Path("ground_truth/query_poses.txt")
QUERY_GLOB = "*_queries_with_intrinsics.txt"
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff"}


def _line_of(path: Path, name: str) -> int | None:
    """Line (1-based) of a list file whose first field is `name`, to point errors at it."""
    try:
        for i, raw in enumerate(Path(path).read_text().splitlines(), start=1):
            if raw.split()[:1] == [name]:
                return i
    except (OSError, UnicodeDecodeError):
        pass
    return None


def condition_of(name: str, list_file: str | Path | None = None) -> str:
    """'day' or 'night' from the query path (/day/, /night/) or its list file (day_time_...)."""
    parts = Path(name).parts
    for c in ("night", "day"):
        if c in parts:
            return c
    if list_file is not None:
        stem = Path(list_file).name
        for c in ("night", "day"):
            if stem.startswith(c):
                return c
    return "unknown"


@dataclass(frozen=True)
class Query:
    name: str
    camera: CameraSpec
    condition: str  # 'day', 'night' or 'unknown'


class Dataset:
    """A dataset folder in the layout above. Reading is lazy; `validate()` checks everything."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(self.root, "dataset folder not found")

    @property
    def images_dir(self) -> Path:
        return self.root / IMAGES

    @property
    def name(self) -> str:
        return self.root.resolve().name

    def image_path(self, name: str) -> Path:
        return self.images_dir / name

    @cached_property
    def query_files(self) -> list[Path]:
        files = sorted((self.root / "queries").glob(QUERY_GLOB))
        if not files:
            raise DataError(self.root / "queries", f"no query list found (expected {QUERY_GLOB})")
        return files

    @cached_property
    def queries(self) -> dict[str, Query]:
        out: dict[str, Query] = {}
        self.query_source: dict[str, Path] = {}  # the list file naming each query
        for f in self.query_files:
            for name, cam in read_intrinsics(f).items():
                if name in out:
                    raise DataError(f, f"query {name!r} is listed in more than one query file", _line_of(f, name))
                out[name] = Query(name, cam, condition_of(name, f))
                self.query_source[name] = f
        return out

    @cached_property
    def reference(self) -> tuple[dict[str, CameraSpec], dict[str, Pose]]:
        """Database cameras and poses, from the NVM (+ intrinsics) or from reference/."""
        nvm, intr, ref = self.root / NVM, self.root / DB_INTRINSICS, self.root / REFERENCE
        if nvm.exists():
            if not intr.exists():
                raise DataError(intr, f"missing: {NVM} needs its intrinsics file {DB_INTRINSICS}")
            cams = read_intrinsics(intr)
            model = read_nvm(nvm, skip_points=True)
            poses = {}
            for c in model.cameras:
                if c.name not in cams:
                    raise DataError(intr, f"no intrinsics for database image {c.name!r} of {nvm.name}")
                poses[c.name] = c.pose
            return {n: cams[n] for n in poses}, poses
        if ref.is_dir():
            return read_colmap_cameras_poses(ref)
        raise DataError(self.root, f"no database poses: expected {NVM} (+ {DB_INTRINSICS}) or {REFERENCE}/")

    @property
    def db_names(self) -> list[str]:
        return sorted(self.reference[1])

    @cached_property
    def gt_poses(self) -> dict[str, Pose] | None:
        p = self.root / GT_POSES
        return read_poses(p) if p.exists() else None

    def validate(self, check_images: bool = True) -> dict:
        """Check the whole layout; raise DataError on the first problem, return a summary."""
        if not self.images_dir.is_dir():
            raise DataError(self.images_dir, "images folder not found")
        cams, poses = self.reference
        if not poses:
            raise DataError(self.root, "the database has no posed images")
        queries = self.queries
        overlap = set(poses) & set(queries)
        if overlap:
            raise DataError(self.root, f"{len(overlap)} images are both database and query, e.g. {min(overlap)!r}")
        basenames: dict[str, str] = {}
        for q in queries:  # the results file keys queries by basename
            b = Path(q).name
            if b in basenames:
                src = self.query_source[q]
                raise DataError(src, f"queries {basenames[b]!r} and {q!r} share the basename {b!r}", _line_of(src, q))
            basenames[b] = q
        if check_images:
            for n in list(poses) + list(queries):
                if not self.image_path(n).is_file():
                    src = self.root / (NVM if (self.root / NVM).exists() else REFERENCE) if n in poses else self.query_source[n]
                    raise DataError(src, f"image {n!r} is listed but not found at {self.image_path(n)}",
                                    _line_of(src, n) if src.is_file() else None)
        gt = self.gt_poses
        if gt is not None:
            unknown = set(gt) - set(queries)
            if unknown:
                bad = min(unknown)
                raise DataError(self.root / GT_POSES, f"pose for an image that is not a query: {bad!r}",
                                _line_of(self.root / GT_POSES, bad))
        conds: dict[str, int] = {}
        for q in queries.values():
            conds[q.condition] = conds.get(q.condition, 0) + 1
        return {"database_images": len(poses), "queries": len(queries), "conditions": conds,
                "ground_truth": 0 if gt is None else len(gt),
                "pose_source": str(NVM if (self.root / NVM).exists() else REFERENCE)}


def write_metadata(root: str | Path, db: dict[str, tuple[CameraSpec, Pose]],
                   queries: dict[str, tuple[CameraSpec, Pose]], write_reference: bool = True) -> None:
    """Write every text file of the layout for a dataset whose images are already on disk.

    Database poses go to the NVM (with database_intrinsics.txt) and, if asked, to reference/;
    queries go to one list per condition and their poses to ground_truth/.
    """
    root = Path(root)
    nvm = NVMModel([NVMCamera(n, float(c.K[0, 0]), p,
                              float(c.params[3]) if c.model == "SIMPLE_RADIAL" else 0.0)
                    for n, (c, p) in db.items()])
    write_nvm(root / NVM, nvm)
    write_intrinsics(root / DB_INTRINSICS, {n: c for n, (c, _) in db.items()})
    if write_reference:
        write_colmap_text(root / REFERENCE, {n: c for n, (c, _) in db.items()}, {n: p for n, (_, p) in db.items()})
    by_cond: dict[str, dict[str, CameraSpec]] = {}
    for n, (c, _) in queries.items():
        by_cond.setdefault(condition_of(n), {})[n] = c
    for cond, cams in by_cond.items():
        write_intrinsics(root / "queries" / f"{cond}_time_queries_with_intrinsics.txt", cams)
    write_poses(root / GT_POSES, {n: p for n, (_, p) in queries.items()})
