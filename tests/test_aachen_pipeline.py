"""The whole chain on datasets laid out exactly as Aachen v1.0 and v1.1 unpack, with no file moved:
images in `images_upright/` at the root; v1.0's NVM + database_intrinsics.txt, or v1.1's binary
COLMAP model in `3D-models/aachen_v_1_1/` with database images under both `db/` and `sequences/`.
Built from the tiny synthetic town, run through `run_pipeline.py` (tiny preset), and the results
file passes the benchmark's format check."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mmcrossvit.layout import DB_INTRINSICS, GT_POSES, NVM, ROOT_IMAGES, V11_MODEL, Dataset, check_results_file

SEQUENCE = "sequences/gopro3_undistorted"  # where v1.1 keeps its extra database images


def aachen_v10(src: Path, dst: Path) -> None:
    """v1.0: images_upright/ at the root, the NVM and database intrinsics, the query lists."""
    shutil.copytree(src / "images/images_upright", dst / ROOT_IMAGES)
    for rel in (NVM, DB_INTRINSICS, GT_POSES):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)
    shutil.copytree(src / "queries", dst / "queries")


def aachen_v11(src: Path, dst: Path) -> None:
    """v1.1: images_upright/ at the root with every other database image moved under sequences/,
    and the reference as a binary COLMAP model naming them there."""
    import pycolmap
    shutil.copytree(src / "images/images_upright", dst / ROOT_IMAGES)
    rec = pycolmap.Reconstruction(str(src / "reference"))
    for k, image_id in enumerate(sorted(rec.images)):
        image = rec.images[image_id]
        if k % 2:
            new = f"{SEQUENCE}/{Path(image.name).name}"
            (dst / ROOT_IMAGES / new).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(dst / ROOT_IMAGES / image.name, dst / ROOT_IMAGES / new)
            image.name = new
    (dst / V11_MODEL).mkdir(parents=True)
    rec.write_binary(str(dst / V11_MODEL))
    (dst / GT_POSES).parent.mkdir(parents=True)
    shutil.copy2(src / GT_POSES, dst / GT_POSES)
    shutil.copytree(src / "queries", dst / "queries")


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_pipeline_runs_on_aachen_as_it_ships(version, tiny_dataset, tmp_path):
    import run_pipeline
    data = tmp_path / f"aachen_{version}"
    (aachen_v10 if version == "v1.0" else aachen_v11)(tiny_dataset, data)
    assert not (data / "images").exists() and not (data / "reference").exists()
    ds = Dataset(data)
    summary = ds.validate()
    assert summary["version"] == f"aachen_{version}"
    if version == "v1.1":
        assert any(n.startswith(SEQUENCE) for n in ds.db_names) and any(n.startswith("db/") for n in ds.db_names)
    timings = run_pipeline.main(["--dataset", str(data), "--preset", "tiny", "--outputs", str(tmp_path / "outputs"),
                                 "--database-root", str(tmp_path / "DataBase")])
    assert {"preprocess", "teacher", "student", "pairs", "localize", "evaluate"} <= set(timings)
    results = tmp_path / "outputs" / data.name / "Pose_Estimation_Results.txt"
    check_results_file(results, ds)  # one line per query, basenames, unit quaternions
    assert len(results.read_text().splitlines()) == len(ds.queries)
