"""The run layout: every path of a run, derived once from the dataset and the run name.

    outputs/<name>/features.h5                 SIFT features of database and query images
    outputs/<name>/pairs-db.txt                database pairs used for triangulation
    outputs/<name>/sfm/                        triangulated COLMAP model (text) + database.db
    outputs/<name>/sfm_summary.json, preprocessing_summary.json
    DataBase/<name>/spatial_db.npz             positives / IoUs / shared counts / folds
    DataBase/<name>/positives.csv, db_images.csv, query_images.csv, stats.json
    DataBase/<name>/spatial_tokens.safetensors RoPE tokens per database image (+ _sample.png)
    outputs/<name>/teacher/, image_only/, student/   checkpoints, TensorBoard, summary.json
    outputs/<name>/ablation/<variant>/         benchmarks/ablation.py's extra training runs
    outputs/<name>/cache/                      resized training images
    outputs/<name>/descriptors.h5              student descriptors of db and query images
    outputs/<name>/pairs-query.txt             retrieval pairs "query db"
    outputs/<name>/pairs-query-ranked.txt      the same, as deep as the ranking (localize --rerank)
    outputs/<name>/pairs-db-retrieval.txt, retrieval.npz
    outputs/<name>/[<tag>/]Pose_Estimation_Results.txt, localization_log.jsonl, localization_summary.json
    outputs/<name>/[<tag>/]diagnosis/          per-query diagnosis of that localization (queries.csv,
                                               summary.json, summary.md, failures.png)
    outputs/<name>/evaluation.json, evaluation.md, timings.json
    outputs/<name>/settings/<step>.json        the resolved settings each step ran with
    outputs/<name>/.lock                       pid, host and command of the run now executing
    outputs/<name>/records/<part>.json         what each finished part was computed from
    DataBase/<name>/records/<part>.json        (the same, for the spatial DB and the tokens)

No script joins its own paths: they all come from a `RunLayout`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

OUTPUTS = Path("outputs")
DATABASE_ROOT = Path("DataBase")
RESULTS_NAME = "Pose_Estimation_Results.txt"
ORACLE_TAG = "oracle"


def run_name(dataset: str | Path, name: str | None = None) -> str:
    """The run name: given, else the dataset folder's name."""
    return name or Path(dataset).resolve().name


@dataclass(frozen=True)
class RunLayout:
    dataset: Path
    name: str
    outputs: Path = OUTPUTS
    database_root: Path = DATABASE_ROOT

    @classmethod
    def create(cls, dataset: str | Path, name: str | None = None, outputs: str | Path | None = None,
               database_root: str | Path | None = None) -> "RunLayout":
        return cls(Path(dataset), run_name(dataset, name), Path(outputs or OUTPUTS),
                   Path(database_root or DATABASE_ROOT))

    # ---- roots ----------------------------------------------------------------------------
    @property
    def out(self) -> Path:
        return self.outputs / self.name

    @property
    def database(self) -> Path:
        return self.database_root / self.name

    # ---- step 1: features, SfM, spatial database ---------------------------------------------
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
    def sfm_points(self) -> Path:
        """Written last by triangulation: its presence marks a complete model."""
        return self.sfm / "points3D.txt"

    @property
    def sfm_database(self) -> Path:
        return self.sfm / "database.db"

    @property
    def sfm_work(self) -> Path:
        return self.out / "sfm.work"

    @property
    def sfm_summary(self) -> Path:
        return self.out / "sfm_summary.json"

    @property
    def preprocessing_summary(self) -> Path:
        return self.out / "preprocessing_summary.json"

    @property
    def spatial_db(self) -> Path:
        return self.database / "spatial_db.npz"

    @property
    def positives_csv(self) -> Path:
        return self.database / "positives.csv"

    @property
    def db_images_csv(self) -> Path:
        return self.database / "db_images.csv"

    @property
    def query_images_csv(self) -> Path:
        return self.database / "query_images.csv"

    @property
    def db_stats(self) -> Path:
        return self.database / "stats.json"

    # ---- step 2: tokens -------------------------------------------------------------------
    @property
    def tokens(self) -> Path:
        return self.database / "spatial_tokens.safetensors"

    @property
    def tokens_sample(self) -> Path:
        return self.database / "spatial_tokens_sample.png"

    # ---- steps 3-4: training --------------------------------------------------------------
    def train_dir(self, kind: str) -> Path:
        """Checkpoints, TensorBoard and summary of a 'teacher', 'image_only' or 'student' run."""
        return self.out / kind

    @property
    def teacher(self) -> Path:
        return self.train_dir("teacher")

    @property
    def student(self) -> Path:
        return self.train_dir("student")

    @property
    def teacher_checkpoint(self) -> Path:
        return self.teacher / "best.pt"

    @property
    def student_checkpoint(self) -> Path:
        return self.student / "best.pt"

    def ablation(self, variant: str) -> Path:
        """A training run of benchmarks/ablation.py that is not one of the pipeline's."""
        return self.out / "ablation" / variant

    @property
    def cache(self) -> Path:
        return self.out / "cache"

    # ---- step 5: retrieval ----------------------------------------------------------------
    @property
    def descriptors(self) -> Path:
        return self.out / "descriptors.h5"

    @property
    def pairs_query(self) -> Path:
        return self.out / "pairs-query.txt"

    @property
    def pairs_query_ranked(self) -> Path:
        """Every query's full ranking (as deep as retrieval.npz): localize --rerank's candidates."""
        return self.out / "pairs-query-ranked.txt"

    @property
    def pairs_db_retrieval(self) -> Path:
        return self.out / "pairs-db-retrieval.txt"

    @property
    def retrieval(self) -> Path:
        return self.out / "retrieval.npz"

    # ---- step 6: localization (tag "": the student's retrieval; "oracle": ground truth) ----
    def localization_dir(self, tag: str = "") -> Path:
        return self.out / tag if tag else self.out

    def results_file(self, tag: str = "") -> Path:
        return self.localization_dir(tag) / RESULTS_NAME

    def topdown(self, tag: str = "") -> Path:
        """Where the queries were placed: a bird's-eye view of the map and the written poses."""
        return self.localization_dir(tag) / "topdown.png"

    def localization_log(self, tag: str = "") -> Path:
        return self.localization_dir(tag) / "localization_log.jsonl"

    def localization_summary(self, tag: str = "") -> Path:
        return self.localization_dir(tag) / "localization_summary.json"

    @property
    def results(self) -> Path:
        return self.results_file()

    @property
    def oracle_results(self) -> Path:
        return self.results_file(ORACLE_TAG)

    # ---- why localization failed (studies/diagnose_localization.py) ---------------------
    def diagnosis_dir(self, tag: str = "") -> Path:
        return self.localization_dir(tag) / "diagnosis"

    def diagnosis_csv(self, tag: str = "") -> Path:
        """One row per query with ground truth: counts per stage, errors, failure kind."""
        return self.diagnosis_dir(tag) / "queries.csv"

    def diagnosis_json(self, tag: str = "") -> Path:
        return self.diagnosis_dir(tag) / "summary.json"

    def diagnosis_md(self, tag: str = "") -> Path:
        return self.diagnosis_dir(tag) / "summary.md"

    def diagnosis_figure(self, tag: str = "") -> Path:
        return self.diagnosis_dir(tag) / "failures.png"

    # ---- step 7: evaluation, run records -----------------------------------------------------
    @property
    def evaluation_json(self) -> Path:
        return self.out / "evaluation.json"

    @property
    def evaluation_md(self) -> Path:
        return self.out / "evaluation.md"

    @property
    def timings(self) -> Path:
        return self.out / "timings.json"

    def settings(self, step: str) -> Path:
        return self.out / "settings" / f"{step}.json"

    @property
    def lock(self) -> Path:
        """Held while a step of this run executes (mmcrossvit/runlock.py): one run at a time."""
        return self.out / ".lock"

    def record(self, part: str) -> Path:
        """What a finished part of a step was computed from (mmcrossvit/records.py); the parts
        stored under DataBase/<name> keep their records there."""
        root = self.database if part in ("spatial_db", "tokens") else self.out
        return root / "records" / f"{part}.json"
