"""The dataset layout (Aachen Day-Night's, which any user dataset follows) and its validation.

Aachen Day-Night v1.0 and v1.1 are read exactly as they unpack; nothing needs moving.

    <dataset>/images_upright/...                      images: Aachen's zips and hloc unpack here,
      - or -                                          (exactly one of the two; names are relative
    <dataset>/images/images_upright/...               to it, e.g. db/1000.jpg, query/day/...)
    <dataset>/queries/*_queries_with_intrinsics.txt   "<name> <COLMAP model> <w> <h> <params...>"
                                                      (Aachen: {day,night}_time_queries_with_intrinsics.txt)
    database poses, the first of:
    <dataset>/3D-models/aachen_v_1_1/                 Aachen v1.1: COLMAP model (binary or text); its
                                                      images are the database wherever they lie
                                                      (db/..., sequences/...)
    <dataset>/3D-models/aachen_cvpr2018_db.nvm        Aachen v1.0: database poses (NVM) plus
    <dataset>/3D-models/database_intrinsics.txt       their intrinsics
    <dataset>/reference/                              any COLMAP model (text or binary) with db poses
    <dataset>/ground_truth/query_poses.txt            optional, "<name> qw qx qy qz tx ty tz"
    <dataset>/queries/unknown_focal.txt               optional, one query name per line: its focal length
                                                      is a guess (localization refines it with the pose)

The database is exactly the reference's posed images; nothing assumes they live under db/.
`check_results_file` checks a results file against what the Visual Localization Benchmark
expects for the dataset: one line "<query basename> qw qx qy qz tx ty tz" per query.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .colmap_io import (CameraSpec, NVMCamera, NVMModel, read_intrinsics, read_nvm, read_poses, read_text,
                        write_intrinsics, write_nvm, write_poses)
from .colmap_model import read_colmap_cameras_poses, write_colmap_text
from .errors import DataError
from .geometry import Pose

IMAGES = Path("images/images_upright")  # this project's place (the synthetic demo writes it)
ROOT_IMAGES = Path("images_upright")  # Aachen's and hloc's place: the zips unpack at the dataset root
IMAGE_DIRS = (IMAGES, ROOT_IMAGES)
NVM = Path("3D-models/aachen_cvpr2018_db.nvm")
DB_INTRINSICS = Path("3D-models/database_intrinsics.txt")
V11_MODEL = Path("3D-models/aachen_v_1_1")  # Aachen v1.1's reference: cameras/images/points3D .bin
REFERENCE = Path("reference")
POSE_SOURCES = (V11_MODEL, NVM, REFERENCE)  # in order of precedence (a v1.1 download holds v1.0's NVM too)
REFERENCE_FILES = (V11_MODEL, NVM, DB_INTRINSICS, REFERENCE)  # every input the database poses may come from
GT_POSES = Path("ground_truth/query_poses.txt")
UNKNOWN_FOCAL = Path("queries/unknown_focal.txt")  # optional: queries whose focal length is a guess
QUERY_GLOB = "*_queries_with_intrinsics.txt"  # Aachen's *_time_queries_with_intrinsics.txt included
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff"}
QUAT_TOLERANCE = 1e-3  # | |q| - 1 | a results file's quaternion may be off by


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

    @cached_property
    def images_dir(self) -> Path:
        """<root>/images_upright (Aachen's) or <root>/images/images_upright: exactly one must exist."""
        found = [self.root / d for d in IMAGE_DIRS if (self.root / d).is_dir()]
        if len(found) > 1:
            raise DataError(self.root, f"two images folders, {found[0]} and {found[1]}: image names resolve in "
                                       f"one only; merge them (e.g. rsync -a {found[1]}/ {found[0]}/) and remove "
                                       f"{found[1]}")
        if not found:
            raise DataError(self.root / IMAGES, f"images folder not found: expected {ROOT_IMAGES}/ (as Aachen's "
                                                f"zips unpack) or {IMAGES}/ in {self.root}")
        return found[0]

    @property
    def name(self) -> str:
        return self.root.resolve().name

    def image_path(self, name: str) -> Path:
        return self.images_dir / name

    @staticmethod
    def results_name(query: str) -> str:
        """A query's name in the benchmark's results file: its basename, for Aachen v1.0 and v1.1 alike
        (query/night/nexus5x/IMG_20161227_173116.jpg -> IMG_20161227_173116.jpg), as hloc writes it."""
        return Path(query).name

    @cached_property
    def query_files(self) -> list[Path]:
        folder = self.root / "queries"
        files = sorted(folder.glob(QUERY_GLOB))
        if not files:
            what = "no query list found" if folder.is_dir() else "queries folder not found"
            raise DataError(folder, f"{what}: expected {folder.name}/{QUERY_GLOB} (Aachen's "
                                    "day_time_queries_with_intrinsics.txt, night_time_queries_with_intrinsics.txt)")
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
    def pose_source(self) -> Path:
        """Where the database poses come from, relative to the root: the first present of
        3D-models/aachen_v_1_1/ (v1.1), 3D-models/aachen_cvpr2018_db.nvm (v1.0) and reference/."""
        for rel in POSE_SOURCES:
            if (self.root / rel).exists():
                return rel
        raise DataError(self.root, f"no database poses: expected {V11_MODEL}/ (Aachen v1.1: a COLMAP model), "
                                   f"{NVM} + {DB_INTRINSICS} (Aachen v1.0) or {REFERENCE}/ (a COLMAP model)")

    @property
    def version(self) -> str:
        """'aachen_v1.1', 'aachen_v1.0' or 'reference' (any other dataset): which reference is read."""
        return {V11_MODEL: "aachen_v1.1", NVM: "aachen_v1.0"}.get(self.pose_source, "reference")

    @cached_property
    def reference(self) -> tuple[dict[str, CameraSpec], dict[str, Pose]]:
        """Database cameras and poses, from the v1.1 model, the NVM (+ intrinsics) or reference/."""
        src = self.root / self.pose_source
        if self.pose_source == NVM:
            intr = self.root / DB_INTRINSICS
            if not intr.exists():
                raise DataError(intr, f"missing: {NVM} needs its intrinsics file {DB_INTRINSICS}")
            cams = read_intrinsics(intr)
            model = read_nvm(src, skip_points=True)
            poses = {}
            for c in model.cameras:
                if c.name not in cams:
                    raise DataError(intr, f"no intrinsics for database image {c.name!r} of {src.name}")
                poses[c.name] = c.pose
            return {n: cams[n] for n in poses}, poses
        if not src.is_dir():
            raise DataError(src, "expected a folder holding a COLMAP model (cameras, images and points3D as "
                                 ".bin or .txt), found a file")
        return read_colmap_cameras_poses(src)  # a folder that is no complete model is named with what it lacks

    @property
    def db_names(self) -> list[str]:
        return sorted(self.reference[1])

    @cached_property
    def unknown_focal(self) -> set[str]:
        """Queries whose focal length is a guess (UNKNOWN_FOCAL; none without the file)."""
        p = self.root / UNKNOWN_FOCAL
        if not p.exists():
            return set()
        out = set()
        for i, raw in enumerate(read_text(p).splitlines(), start=1):
            name = raw.strip()
            if name and name not in self.queries:
                raise DataError(p, f"{name!r} is not a query of any list in queries/", i)
            out |= {name} - {""}
        return out

    @cached_property
    def gt_poses(self) -> dict[str, Pose] | None:
        p = self.root / GT_POSES
        return read_poses(p) if p.exists() else None

    def _missing_image(self, n: str, is_db: bool) -> DataError:
        src = self.root / self.pose_source if is_db else self.query_source[n]
        hint = ""
        if is_db and self.pose_source == V11_MODEL and not n.startswith("db/"):
            hint = " (Aachen v1.1's added database images come in aachen_v1_1.zip; unzip it in the dataset folder)"
        return DataError(src, f"image {n!r} is listed but not found at {self.image_path(n)}{hint}",
                         _line_of(src, n) if src.is_file() else None)

    def validate(self, check_images: bool = True) -> dict:
        """Check the whole layout; raise DataError on the first problem, return a summary."""
        images = self.images_dir
        cams, poses = self.reference
        if not poses:
            raise DataError(self.root / self.pose_source, "the database has no posed images")
        queries = self.queries
        overlap = set(poses) & set(queries)
        if overlap:
            raise DataError(self.root, f"{len(overlap)} images are both database and query, e.g. {min(overlap)!r}")
        basenames: dict[str, str] = {}
        for q in queries:  # the results file keys queries by basename
            b = self.results_name(q)
            if b in basenames:
                src = self.query_source[q]
                raise DataError(src, f"queries {basenames[b]!r} and {q!r} share the basename {b!r}", _line_of(src, q))
            basenames[b] = q
        if check_images:
            for n in poses:
                if not self.image_path(n).is_file():
                    raise self._missing_image(n, True)
            for n in queries:
                if not self.image_path(n).is_file():
                    raise self._missing_image(n, False)
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
                "pose_source": str(self.pose_source), "version": self.version,
                "images": str(images.relative_to(self.root)),
                "query_lists": [str(f.relative_to(self.root)) for f in self.query_files]}


def check_results_file(path: str | Path, ds: Dataset) -> int:
    """Check a results file as the Visual Localization Benchmark reads it; the number of poses.

    One line per query, "<name> qw qx qy qz tx ty tz" (8 whitespace-separated fields), the name
    `ds.results_name(query)` (the basename for Aachen v1.0 and v1.1), finite numbers, a unit
    quaternion (| |q| - 1 | <= 1e-3), every query exactly once and nothing else (blank lines are
    ignored). The first problem is a DataError naming the file and the line.
    """
    path = Path(path)
    text = read_text(path, "results file not found")
    expected: dict[str, str] = {}  # results name -> query
    for q in sorted(ds.queries):
        r = ds.results_name(q)
        if r in expected:
            src = ds.query_source[q]
            raise DataError(src, f"queries {expected[r]!r} and {q!r} would share the name {r!r} in a results "
                                 "file", _line_of(src, q))
        expected[r] = q
    example = next(iter(expected), "<basename>")
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        tok = raw.split()
        if not tok:
            continue
        if tok[0].startswith("#"):
            raise DataError(path, "a comment line: the benchmark's format has one pose line per query and "
                                  "nothing else", lineno)
        if len(tok) != 8:
            raise DataError(path, f"expected '<name> qw qx qy qz tx ty tz' (8 fields), got {len(tok)} fields",
                            lineno)
        name = tok[0]
        try:
            v = [float(t) for t in tok[1:]]
        except ValueError:
            raise DataError(path, f"expected 7 numbers after the name, got {' '.join(tok[1:])!r}", lineno) from None
        if not all(math.isfinite(x) for x in v):
            raise DataError(path, f"non-finite value in the pose {' '.join(tok[1:])!r}", lineno)
        norm = math.sqrt(sum(x * x for x in v[:4]))
        if abs(norm - 1.0) > QUAT_TOLERANCE:
            raise DataError(path, f"quaternion {' '.join(tok[1:5])} has norm {norm:.6g}; the benchmark expects a "
                                  f"unit quaternion (within {QUAT_TOLERANCE:g})", lineno)
        if name not in expected:
            if name in ds.queries:
                why = f"the benchmark expects the query's basename {ds.results_name(name)!r}, not its path"
            elif ds.results_name(name) in expected:
                why = (f"the benchmark expects the basename {ds.results_name(name)!r} (the query is "
                       f"{expected[ds.results_name(name)]!r})")
            else:
                why = f"not a query of {ds.root} (names are query basenames, e.g. {example!r})"
            raise DataError(path, f"{name!r}: {why}", lineno)
        if name in seen:
            raise DataError(path, f"query {name!r} has a second pose (first on line {seen[name]})", lineno)
        seen[name] = lineno
    missing = [r for r in expected if r not in seen]
    if missing:
        q = expected[missing[0]]
        src = ds.query_source[q]
        line = _line_of(src, q)
        where = f"{src}" + (f", line {line}" if line else "")
        raise DataError(path, f"{len(missing)} of {len(expected)} queries have no pose, e.g. {missing[0]!r} "
                              f"({q!r}, listed in {where}); the benchmark needs every query exactly once")
    return len(seen)


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
