"""Where each step reads and writes: one table for every script, so the folders stay in step.

    outputs/<name>/features.h5            SIFT features of database and query images
    outputs/<name>/pairs-db.txt           database pairs used for triangulation
    outputs/<name>/sfm/                   triangulated COLMAP model (text) + database.db
    outputs/<name>/sfm_summary.json
    DataBase/<name>/spatial_db.npz        positives / IoUs / shared counts / folds
    DataBase/<name>/positives.csv         the same positives, human-readable
    DataBase/<name>/db_images.csv         database names, fold, number of 3D points
    DataBase/<name>/query_images.csv      query names and day/night
    DataBase/<name>/stats.json
    DataBase/<name>/spatial_tokens.safetensors   RoPE tokens per database image
    outputs/<name>/teacher/               checkpoints (best.pt, last.pt), TensorBoard runs
    outputs/<name>/student/
    outputs/<name>/descriptors.h5         student descriptors of db and query images
    outputs/<name>/pairs-query.txt        retrieval pairs "query db"
    outputs/<name>/Pose_Estimation_Results.txt
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    name: str
    out: Path
    database: Path

    @property
    def features(self) -> Path:
        return self.out / "features.h5"

    @property
    def pairs_db(self) -> Path:
        return self.out / "pairs-db.txt"

    @property
    def sfm(self) -> Path:
        return self.out / "sfm"

    @property
    def sfm_work(self) -> Path:
        return self.out / "sfm.work"

    @property
    def sfm_summary(self) -> Path:
        return self.out / "sfm_summary.json"

    @property
    def spatial_db(self) -> Path:
        return self.database / "spatial_db.npz"

    @property
    def db_stats(self) -> Path:
        return self.database / "stats.json"

    @property
    def tokens(self) -> Path:
        return self.database / "spatial_tokens.safetensors"

    @property
    def teacher(self) -> Path:
        return self.out / "teacher"

    @property
    def student(self) -> Path:
        return self.out / "student"

    @property
    def descriptors(self) -> Path:
        return self.out / "descriptors.h5"

    @property
    def pairs_query(self) -> Path:
        return self.out / "pairs-query.txt"

    @property
    def results(self) -> Path:
        return self.out / "Pose_Estimation_Results.txt"


def run_paths(name: str, outputs: Path = Path("outputs"), database_root: Path = Path("DataBase")) -> RunPaths:
    return RunPaths(name, Path(outputs) / name, Path(database_root) / name)
