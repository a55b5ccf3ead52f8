"""Dataset layout (mmcrossvit.layout): writing the metadata, validating, and naming the culprit file."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from mmcrossvit.colmap_io import CameraSpec
from mmcrossvit.errors import DataError
from mmcrossvit.geometry import Pose, pose_error
from mmcrossvit.layout import DB_INTRINSICS, GT_POSES, IMAGES, NVM, REFERENCE, Dataset, condition_of, write_metadata

W, H = 32, 24
DB_CAM = CameraSpec("SIMPLE_RADIAL", W, H, (30.0, 16.0, 12.0, -0.01))
Q_CAM = CameraSpec("PINHOLE", W, H, (28.0, 29.0, 16.0, 12.0))
DAY_LIST = "queries/day_time_queries_with_intrinsics.txt"
NIGHT_LIST = "queries/night_time_queries_with_intrinsics.txt"


def _pose(i: int) -> Pose:
    return Pose.look_at([3.0 * np.cos(i), 3.0 * np.sin(i), 1.0 + 0.1 * i], [0.0, 0.0, 0.5 * i])


def make_dataset(root: Path, db_names=("db/1.jpg", "db/2.jpg", "db/sub/3.jpg"),
                 query_names=("query/day/milestone/a.jpg", "query/day/nexus4/b.jpg", "query/night/nexus5x/c.jpg")):
    db = {n: (DB_CAM, _pose(i)) for i, n in enumerate(db_names)}
    queries = {n: (Q_CAM, _pose(10 + i)) for i, n in enumerate(query_names)}
    img = np.full((H, W, 3), 127, np.uint8)
    for n in list(db) + list(queries):
        p = root / IMAGES / n
        p.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(p), img)
    write_metadata(root, db, queries)
    return db, queries


def expect_data_error(fn, path, line=None, contains=None) -> DataError:
    with pytest.raises(DataError) as ei:
        fn()
    e = ei.value
    assert e.path is not None and Path(e.path) == Path(path), (str(e.path), str(path))
    assert str(path) in str(e)
    if line is not None:
        assert e.line == line and f"line {line}" in str(e), str(e)
    if contains is not None:
        assert contains in str(e), str(e)
    return e


def line_of(path: Path, name: str) -> int:
    """1-based line of `path` whose first field is `name` (independent of the code under test)."""
    for i, ln in enumerate(path.read_text().splitlines(), start=1):
        if ln.split()[:1] == [name]:
            return i
    raise AssertionError(f"{name} not in {path}")


def test_valid_dataset(tmp_path):
    db, queries = make_dataset(tmp_path)
    # the layout's files exist where Aachen has them
    for rel in (NVM, DB_INTRINSICS, GT_POSES, DAY_LIST, NIGHT_LIST, REFERENCE / "images.txt"):
        assert (tmp_path / rel).is_file(), rel
    ds = Dataset(tmp_path)
    summary = ds.validate()
    assert summary["database_images"] == 3
    assert summary["queries"] == 3
    assert summary["conditions"] == {"day": 2, "night": 1}
    assert summary["ground_truth"] == 3
    assert summary["pose_source"] == str(NVM)
    assert ds.db_names == sorted(db)
    cams, poses = ds.reference
    for n, (c, p) in db.items():
        assert cams[n] == c
        dt, dr = pose_error(poses[n], p)
        assert dt < 1e-6 and dr < 1e-3
        np.testing.assert_allclose(poses[n].R, p.R, atol=1e-8)
    for n, (c, p) in queries.items():
        q = ds.queries[n]
        assert q.camera == c and q.condition == n.split("/")[1]
        np.testing.assert_allclose(ds.gt_poses[n].R, p.R, atol=1e-8)
        np.testing.assert_allclose(ds.gt_poses[n].center, p.center, atol=1e-7)
    assert ds.image_path("db/1.jpg") == tmp_path / IMAGES / "db/1.jpg"
    assert cv2.imread(str(ds.image_path("db/sub/3.jpg"))).shape == (H, W, 3)


def test_reference_only_dataset(tmp_path):
    db, _ = make_dataset(tmp_path)
    shutil.rmtree(tmp_path / "3D-models")
    ds = Dataset(tmp_path)
    summary = ds.validate()
    assert summary["pose_source"] == str(REFERENCE)
    assert summary["database_images"] == 3
    cams, poses = ds.reference
    assert set(poses) == set(db)
    for n, (c, p) in db.items():
        assert cams[n].model == c.model and (cams[n].width, cams[n].height) == (W, H)
        np.testing.assert_allclose(cams[n].params, c.params)
        np.testing.assert_allclose(poses[n].R, p.R, atol=1e-10)
        np.testing.assert_allclose(poses[n].t, p.t, atol=1e-9)


def test_no_ground_truth_is_fine(tmp_path):
    make_dataset(tmp_path)
    (tmp_path / GT_POSES).unlink()
    ds = Dataset(tmp_path)
    assert ds.gt_poses is None
    assert ds.validate()["ground_truth"] == 0


def test_missing_dataset_folder(tmp_path):
    expect_data_error(lambda: Dataset(tmp_path / "nope"), tmp_path / "nope", contains="not found")


def test_missing_images_folder(tmp_path):
    make_dataset(tmp_path)
    shutil.rmtree(tmp_path / "images")
    expect_data_error(lambda: Dataset(tmp_path).validate(), tmp_path / IMAGES, contains="images folder")


def test_missing_query_list(tmp_path):
    make_dataset(tmp_path)
    for f in (tmp_path / "queries").glob("*.txt"):
        f.unlink()
    expect_data_error(lambda: Dataset(tmp_path).validate(), tmp_path / "queries", contains="query list")


def test_missing_poses(tmp_path):
    make_dataset(tmp_path)
    shutil.rmtree(tmp_path / "3D-models")
    shutil.rmtree(tmp_path / REFERENCE)
    expect_data_error(lambda: Dataset(tmp_path).validate(), tmp_path, contains="no database poses")


@pytest.mark.parametrize("listed", ["query/night/nexus5x/c.jpg", "query/day/nexus4/b.jpg"])
def test_query_image_listed_but_absent(tmp_path, listed):
    make_dataset(tmp_path)
    (tmp_path / IMAGES / listed).unlink()
    lst = tmp_path / (NIGHT_LIST if "/night/" in listed else DAY_LIST)
    e = expect_data_error(lambda: Dataset(tmp_path).validate(), lst, line_of(lst, listed), listed)
    assert "not found" in e.reason
    # without the image check the dataset is fine
    assert Dataset(tmp_path).validate(check_images=False)["queries"] == 3


def test_database_image_listed_but_absent(tmp_path):
    make_dataset(tmp_path)
    (tmp_path / IMAGES / "db/2.jpg").unlink()
    nvm = tmp_path / NVM
    expect_data_error(lambda: Dataset(tmp_path).validate(), nvm, line_of(nvm, "db/2.jpg"), "db/2.jpg")


def test_malformed_query_intrinsics_line(tmp_path):
    make_dataset(tmp_path)
    lst = tmp_path / DAY_LIST
    n = len(lst.read_text().splitlines())
    with open(lst, "a") as f:
        f.write("query/day/milestone/z.jpg PINHOLE 32 24 28 29 16\n")  # 3 of 4 parameters
    expect_data_error(lambda: Dataset(tmp_path).validate(), lst, n + 1, "PINHOLE takes 4")
    lst.write_text(lst.read_text().replace("28 29 16\n", "28 29 16 x\n"))
    expect_data_error(lambda: Dataset(tmp_path).validate(), lst, n + 1, "expected numbers")


def test_unknown_camera_model_in_database_intrinsics(tmp_path):
    make_dataset(tmp_path)
    intr = tmp_path / DB_INTRINSICS
    lines = intr.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace("SIMPLE_RADIAL", "SIMPLE_RADIALL")
    intr.write_text("".join(lines))
    expect_data_error(lambda: Dataset(tmp_path).validate(), intr, 2, "unknown camera model 'SIMPLE_RADIALL'")


def test_nvm_without_database_intrinsics(tmp_path):
    make_dataset(tmp_path)
    (tmp_path / DB_INTRINSICS).unlink()
    # even with reference/ present, an NVM without its intrinsics is an error, not silently skipped
    expect_data_error(lambda: Dataset(tmp_path).validate(), tmp_path / DB_INTRINSICS, contains="missing")


def test_nvm_image_without_intrinsics(tmp_path):
    make_dataset(tmp_path)
    intr = tmp_path / DB_INTRINSICS
    intr.write_text("".join(ln for ln in intr.read_text().splitlines(keepends=True) if not ln.startswith("db/2.jpg")))
    expect_data_error(lambda: Dataset(tmp_path).validate(), intr, contains="db/2.jpg")


def append_line(path, line: str) -> int:
    """Append a line to a list file; its line number."""
    n = len(path.read_text().splitlines())
    with open(path, "a") as f:
        f.write(line + "\n")
    return n + 1


def test_ground_truth_for_non_query(tmp_path):
    make_dataset(tmp_path)
    gt = tmp_path / GT_POSES
    lineno = append_line(gt, "db/1.jpg 1 0 0 0 0 0 0")
    expect_data_error(lambda: Dataset(tmp_path).validate(), gt, lineno, "'db/1.jpg'")


def test_bad_ground_truth_line(tmp_path):
    make_dataset(tmp_path)
    gt = tmp_path / GT_POSES
    lines = gt.read_text().splitlines(keepends=True)
    lines[1] = lines[1].split()[0] + " 1 0 0 0 nan 0 0\n"
    gt.write_text("".join(lines))
    expect_data_error(lambda: Dataset(tmp_path).validate(), gt, 2, "non-finite")


def test_queries_sharing_a_basename(tmp_path):
    make_dataset(tmp_path, query_names=("query/day/milestone/x.jpg", "query/night/nexus5x/x.jpg",
                                        "query/day/nexus4/y.jpg"))
    lst = tmp_path / NIGHT_LIST  # the second of the two, in sorted file order
    e = expect_data_error(lambda: Dataset(tmp_path).validate(), lst, line_of(lst, "query/night/nexus5x/x.jpg"))
    assert "query/day/milestone/x.jpg" in str(e) and "query/night/nexus5x/x.jpg" in str(e)


def test_queries_sharing_a_basename_same_file(tmp_path):
    make_dataset(tmp_path, query_names=("query/day/a/x.jpg", "query/day/b/x.jpg"))
    lst = tmp_path / DAY_LIST
    expect_data_error(lambda: Dataset(tmp_path).validate(), lst, 2, "share the basename 'x.jpg'")


def test_query_in_two_lists(tmp_path):
    make_dataset(tmp_path)
    night = tmp_path / NIGHT_LIST
    append_line(night, "query/day/milestone/a.jpg PINHOLE 32 24 28 29 16 12")
    expect_data_error(lambda: Dataset(tmp_path).validate(), night, contains="more than one query file")


def test_query_that_is_also_database(tmp_path):
    make_dataset(tmp_path)
    append_line(tmp_path / DAY_LIST, "db/1.jpg PINHOLE 32 24 28 29 16 12")
    expect_data_error(lambda: Dataset(tmp_path).validate(), tmp_path, contains="both database and query")


def test_query_name_escaping_images_folder(tmp_path):
    make_dataset(tmp_path)
    lst = tmp_path / DAY_LIST
    lineno = append_line(lst, "../outside.jpg PINHOLE 32 24 28 29 16 12")
    expect_data_error(lambda: Dataset(tmp_path).validate(), lst, lineno, "relative path")


def test_condition_of():
    assert condition_of("query/night/nexus5x/IMG_20161227_173116.jpg") == "night"
    assert condition_of("query/day/milestone/2010-10-30_17-47-25_73.jpg") == "day"
    assert condition_of("IMG_1.jpg", "queries/day_time_queries_with_intrinsics.txt") == "day"
    assert condition_of("IMG_1.jpg", Path("x/night_time_queries_with_intrinsics.txt")) == "night"
    assert condition_of("IMG_1.jpg") == "unknown"
    assert condition_of("IMG_1.jpg", "queries/all_queries_with_intrinsics.txt") == "unknown"
    # the path wins over the list file, and folder names are matched whole, not as substrings
    assert condition_of("query/night/nexus5x/x.jpg", "day_time_queries_with_intrinsics.txt") == "night"
    assert condition_of("query/nightlife/x.jpg") == "unknown"
    assert condition_of("query/daylight/x.jpg", "night_time_queries_with_intrinsics.txt") == "night"
