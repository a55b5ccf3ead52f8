"""Your own photos: a folder becomes a map (no poses, no intrinsics), new photos are localized
against it without retraining, and bad files are reported once each (datasets/photos.py,
run_pipeline.py --photos / --queries)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmcrossvit.colmap_io import CameraSpec
from mmcrossvit.errors import DataError
from mmcrossvit.layout import Dataset
from mmcrossvit.localization import estimate_pose
from mmcrossvit.photos import scan


def _noise(path: Path, seed: int, size=(320, 240)) -> None:
    """A photograph of no place of the map: blocks of random grey levels (SIFT finds corners in it)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (size[1] // 8, size[0] // 8), dtype=np.uint8)
    Image.fromarray(np.kron(blocks, np.ones((8, 8), np.uint8))).convert("RGB").save(path)


def _exif_jpeg(path: Path, focal_35mm: int) -> None:
    im = Image.fromarray((np.random.default_rng(0).random((240, 320, 3)) * 255).astype(np.uint8))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = focal_35mm  # FocalLengthIn35mmFilm
    im.save(path, exif=exif)


def test_scan_reports_each_unusable_file_once_and_reads_exif(tmp_path):
    (tmp_path / "notes.txt").write_text("not a photo")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(200))
    (tmp_path / "sub dir").mkdir()
    _exif_jpeg(tmp_path / "sub dir" / "with exif.jpg", 35)
    _noise(tmp_path / "plain.png", 0)
    photos, skipped = scan(tmp_path, default_focal_factor=1.5, progress=False)
    assert sorted(skipped) == ["broken.jpg", "empty.jpg", "notes.txt"]
    assert "empty file" in skipped["empty.jpg"] and "not an image file" in skipped["notes.txt"]
    assert "not a readable image" in skipped["broken.jpg"]
    by = {p.name: p for p in photos}
    assert by["plain.png"].focal_source == "default" and by["plain.png"].camera.params[0] == pytest.approx(1.5 * 320)
    exif = by["sub dir/with exif.jpg"]
    assert exif.focal_source == "exif" and exif.camera.params[0] != pytest.approx(1.5 * 320)
    assert exif.camera.params[0] == pytest.approx(35 / 36 * 320, rel=0.1)  # 35 mm equivalent on a 320 px side


def test_a_guessed_focal_length_is_refined_with_the_pose():
    rng = np.random.default_rng(0)
    true = CameraSpec("SIMPLE_RADIAL", 1200, 800, (1000.0, 600.0, 400.0, 0.0))
    guess = CameraSpec("SIMPLE_RADIAL", 1200, 800, (1440.0, 600.0, 400.0, 0.0))  # COLMAP's 1.2 x the longer side
    X = rng.uniform(-4, 4, (300, 3)) + [0, 0, 12]
    uv = np.asarray(true.to_pycolmap().img_from_cam(X))
    fixed = estimate_pose(uv, X, guess, 4.0)
    refined = estimate_pose(uv, X, guess, 4.0, refine_focal=True)
    assert refined.camera.params[0] == pytest.approx(1000.0, rel=1e-3)
    assert np.linalg.norm(refined.pose.center) < 1e-2
    assert fixed is None or fixed.inliers.sum() < 0.9 * len(X) or np.linalg.norm(fixed.pose.center) > 0.5


def test_unknown_focal_names_only_queries(tiny_dataset, tmp_path):
    import shutil
    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset, root, symlinks=True)
    q = sorted(Dataset(root).queries)[0]
    (root / "queries" / "unknown_focal.txt").write_text(f"{q}\n\n")
    assert Dataset(root).unknown_focal == {q}
    (root / "queries" / "unknown_focal.txt").write_text(f"{q}\ndb/0000.jpg\n")
    with pytest.raises(DataError, match=r"unknown_focal.txt, line 2: 'db/0000.jpg' is not a query"):
        Dataset(root).unknown_focal


def test_the_pose_free_path_reconstructs_the_listed_images_only(tiny_dataset, tmp_path):
    from mmcrossvit.steps.preprocess import incremental_names
    import shutil
    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset, root, symlinks=True)
    listed = sorted(Dataset(root).db_names)[:5]
    (root / "3D-models" / "database_intrinsics.txt").write_text(
        "".join(f"{n} SIMPLE_RADIAL 320 240 300 160 120 0\n" for n in listed))
    assert incremental_names(Dataset(root)) == listed  # not every file under db/


@pytest.fixture(scope="module")
def photo_map(tiny_dataset, tmp_path_factory):
    """`make map` on 15 neighbouring photos of the tiny town (no poses, no intrinsics, no EXIF) with
    a note, an empty 'photo' and a photo of another place among them; returns (root, dataset, run, output)."""
    import run_pipeline
    from mmcrossvit.paths import RunLayout
    root = tmp_path_factory.mktemp("photos")
    photos = root / "my photos"
    photos.mkdir()
    ds = Dataset(tiny_dataset)
    _, poses = ds.reference
    names = sorted(poses)
    c = np.array([poses[n].center for n in names])
    for i in np.argsort(np.linalg.norm(c - c[0], axis=1), kind="stable")[:15]:
        os.symlink(ds.image_path(names[i]).resolve(), photos / Path(names[i]).name)
    (photos / "readme.txt").write_text("holiday photos")
    (photos / "zero.jpg").write_bytes(b"")
    _noise(photos / "elsewhere.png", 1)
    dataset = root / "datasets" / "mymap"
    args = ["--photos", str(photos), "--dataset", str(dataset), "--preset", "paper", "--holdout-every", "4",
            "--outputs", str(root / "outputs"), "--database-root", str(root / "DataBase")]
    run_pipeline.main(args)
    return root, dataset, RunLayout.create(dataset, None, root / "outputs", root / "DataBase"), args


def test_a_folder_of_photos_becomes_a_map_checked_on_held_out_photos(photo_map):
    root, dataset, run, _ = photo_map
    s = json.loads((dataset / "photos.json").read_text())
    assert s["complete"] and s["photos"] == 16 and s["focal_guessed"] == 16 and s["focal_from_exif"] == 0
    assert set(s["skipped"]) == {"readme.txt", "zero.jpg"}
    assert "elsewhere.png" in s["not_registered"]
    assert s["registered"] >= 6 and s["held_out"] >= 2
    ds = Dataset(dataset)
    assert len(ds.db_names) == s["database_images"] and set(ds.gt_poses) == set(ds.queries)
    assert ds.unknown_focal == set(ds.queries)  # no EXIF: every held-out photo's focal length is a guess
    # a small map: nothing trained, every database image a candidate (no more of them than the pairs step's K)
    assert not run.teacher.exists() and not run.student.exists() and not run.pairs_query.exists()
    rows = [json.loads(x) for x in run.localization_log().read_text().splitlines()]
    assert len(rows) == len(ds.queries) and all(r.get("focal") for r in rows if r["success"])
    assert all(sorted(r["retrieved"]) == sorted(ds.db_names) for r in rows)
    report = json.loads(run.evaluation_json.read_text())
    assert "SfM" in report["ground_truth"]
    table = report["localization"]["every database image (small map)"]["all"]
    assert table["n"] == len(ds.queries)
    assert table["recall"][1] >= 50.0  # the held-out photos localize against the map of the others
    assert run.topdown().exists()


def test_new_photos_are_localized_without_retraining_and_bad_files_reported(photo_map, tiny_dataset):
    import run_pipeline
    root, dataset, run, args = photo_map
    new = root / "new photos"
    new.mkdir()
    ds0 = Dataset(tiny_dataset)
    day = sorted(q for q in ds0.queries if ds0.queries[q].condition == "day")[:2]
    for q in day:
        os.symlink(ds0.image_path(q).resolve(), new / Path(q).name)
    _noise(new / "elsewhere.png", 2)
    (new / "list.csv").write_text("a,b\n")
    sfm_record = run.record("sfm").stat().st_mtime_ns
    db_record = run.record("spatial_db").stat().st_mtime_ns
    i = args.index("--photos")
    run_pipeline.main(args[:i] + ["--queries", str(new)] + args[i + 2:])
    assert run.record("sfm").stat().st_mtime_ns == sfm_record  # no new SfM
    assert run.record("spatial_db").stat().st_mtime_ns == db_record  # the queries are no input of the database
    ds = Dataset(dataset)
    added = sorted(q for q in ds.queries if q.startswith("query/new_photos/"))
    assert [Path(q).name for q in added] == sorted([Path(q).name for q in day] + ["elsewhere.png"])
    report = json.loads((dataset / "queries" / "new_photos.json").read_text())
    assert list(report["skipped"]) == ["list.csv"]
    rows = {r["query"]: r for r in map(json.loads, run.localization_log().read_text().splitlines())}
    assert set(added) <= set(rows)
    assert not rows["query/new_photos/elsewhere.png"]["success"]  # another place: never counted as localized
    lines = run.results.read_text().splitlines()
    assert len(lines) == len(ds.queries) and any(x.startswith("elsewhere.png ") for x in lines)
    # the map's own check is still there: the held-out photos, evaluated against their SfM poses
    table = json.loads(run.evaluation_json.read_text())["localization"]["every database image (small map)"]["all"]
    assert table["n"] == len(ds.gt_poses)


def test_make_map_and_localize_explain_their_arguments():
    import subprocess
    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run(["make", "-s", "map", "IMAGES=photos"], capture_output=True, text=True, cwd=repo)
    assert r.returncode != 0 and "usage: make map IMAGES=path/to/photos NAME=mymap" in r.stdout + r.stderr
    r = subprocess.run(["make", "-s", "localize", "MAP=mymap"], capture_output=True, text=True, cwd=repo)
    assert r.returncode != 0 and "usage: make localize MAP=mymap QUERIES=path/to/new/photos" in r.stdout + r.stderr


@pytest.mark.parametrize("n_db, expected", [(5, "all"), (100, "all"), (101, "imagenet"), (299, "imagenet"), (300, None)])
def test_a_small_map_trains_nothing_and_retrieves_exhaustively_or_by_the_imagenet_encoder(tmp_path, n_db, expected):
    from run_pipeline import small_map_mode
    from mmcrossvit.paths import RunLayout
    run = RunLayout.create(tmp_path / "ds", "x", tmp_path / "outputs", tmp_path / "DataBase")
    assert small_map_mode(run, 300, "paper") is None  # before preprocessing: not known
    run.database.mkdir(parents=True)
    run.db_images_csv.write_text("name,fold,num_points\n" + "".join(f"db/{i}.jpg,0,10\n" for i in range(n_db)))
    assert small_map_mode(run, 300, "paper") == expected  # the paper preset's K: 100
    assert small_map_mode(run, 0, "paper") is None  # --small-map 0: always train


def test_the_imagenet_encoder_retrieves_without_a_checkpoint(tiny_run):
    from mmcrossvit import cli
    from mmcrossvit.steps import execute, pairs
    from mmcrossvit.storage import read_npz
    from mmcrossvit.paths import RunLayout
    dataset, run0 = tiny_run
    run = RunLayout(run0.dataset, "imagenet", run0.outputs, run0.database_root)
    run.out.mkdir(parents=True)
    os.symlink(run0.features.resolve(), run.features)
    out = execute(pairs, run, cli.settings(pairs, "tiny", descriptor="imagenet"))
    assert not run.student_checkpoint.exists() and out["queries"] == len(Dataset(dataset).queries)
    r = read_npz(run.retrieval)
    # the ImageNet encoder ranks the database: a query's best match is far more similar than its worst
    assert (r["query_scores"][:, 0] > r["query_scores"][:, -1] + 0.05).all()


def test_a_run_without_query_ground_truth_reports_the_maps_hold_out_check(tiny_run, tmp_path):
    """evaluate.py without ground truth: database images localized from the others' matches."""
    import shutil
    from mmcrossvit import cli
    from mmcrossvit.paths import RunLayout
    from mmcrossvit.steps import evaluate, execute
    dataset, run0 = tiny_run
    root = tmp_path / "ds"
    shutil.copytree(dataset, root, symlinks=True)
    shutil.rmtree(root / "ground_truth")
    run = RunLayout(root, "nogt", run0.outputs, run0.database_root)
    run.out.mkdir(parents=True)
    for p in (run0.features, run0.sfm):
        os.symlink(p.resolve(), run.out / p.name)
    report = execute(evaluate, run, cli.settings(evaluate, "tiny"))
    rows = report["holdout"]["rows"]
    assert len(rows) == 8 and all(r["candidates"] == len(Dataset(root).db_names) - 1 for r in rows)  # no retrieval
    assert all(r["image"] in Dataset(root).db_names for r in rows)
    table = report["holdout"]["table"]["all"]
    assert table["n"] == 8 and table["recall"][1] >= 75.0  # on a good map, nearly every image finds itself
    assert report["holdout"]["wrong_localized"] == 0
    assert "Hold-out check" in run.evaluation_md.read_text()


def test_a_large_folder_is_matched_by_retrieval_not_exhaustively(tiny_dataset, tmp_path):
    """Above EXHAUSTIVE_MAX photos, each is matched with its nearest by the ImageNet encoder: pairs
    grow linearly, and they link neighbours (the synthetic town's cameras say which are near)."""
    from datasets.photos import retrieval_pairs
    ds = Dataset(tiny_dataset)
    names = sorted(ds.db_names)[:12]
    pairs = retrieval_pairs(ds.images_dir, names, tmp_path / "d.h5", 0, "cpu", k=3)
    assert {n for p in pairs for n in p} == set(names) and 12 * 3 / 2 <= len(pairs) <= 12 * 3
    _, poses = ds.reference
    dist = lambda a, b: np.linalg.norm(poses[a].center - poses[b].center)  # noqa: E731
    everyday = np.median([dist(a, b) for i, a in enumerate(names) for b in names[i + 1:]])
    assert np.median([dist(a, b) for a, b in pairs]) < everyday  # nearer than a random pair
