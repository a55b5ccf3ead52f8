"""Aachen Day-Night v1.0 and v1.1 read exactly as they unpack (mmcrossvit.layout), and the
benchmark's results-file format (layout.check_results_file).

The fixtures are written here, line for line in the real files' formats:
- v1.0: 3D-models/aachen_cvpr2018_db.nvm ("NVM_V3", blank, camera count, lines
  "db/1000.jpg <focal> <qw qx qy qz> <cx cy cz> <radial> 0", blank, point count, points) and
  3D-models/database_intrinsics.txt ("db/1000.jpg SIMPLE_RADIAL 1600 1063 1469.2 800 531.5 -0.0353");
- both: queries/{day,night}_time_queries_with_intrinsics.txt
  ("query/day/milestone/2010-10-30_17-47-25_73.jpg SIMPLE_RADIAL 1600 1200 1469.2 800 600 -0.0353");
- v1.1: 3D-models/aachen_v_1_1/ a COLMAP model written by pycolmap (binary, or text), with
  database images under db/ and sequences/ (gopro3_undistorted, nexus4_sequences), as shipped
  (without rigs/frames files: the model predates COLMAP 3.12) or as pycolmap 4.x writes it;
- images: tiny cv2 images under images_upright/ (as Aachen's zips unpack) or images/images_upright/.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from mmcrossvit.colmap_io import CameraSpec, write_poses
from mmcrossvit.errors import DataError
from mmcrossvit.geometry import Pose
from mmcrossvit.layout import (DB_INTRINSICS, GT_POSES, IMAGES, NVM, REFERENCE, ROOT_IMAGES, V11_MODEL, Dataset,
                               check_results_file)
from tests.test_layout import expect_data_error, line_of

DAY_LIST = Path("queries/day_time_queries_with_intrinsics.txt")
NIGHT_LIST = Path("queries/night_time_queries_with_intrinsics.txt")
V10_DB = {  # name: (width, height, focal, radial), as in database_intrinsics.txt
    "db/1000.jpg": (1600, 1063, 1469.2, -0.0353),
    "db/1045.jpg": (1600, 1200, 1084.59, 0.0810989),
    "db/4446.jpg": (1063, 1600, 1556.98, 0.086426),
}
DAY = {
    "query/day/milestone/2010-10-30_17-47-25_73.jpg": "SIMPLE_RADIAL 1600 1200 1469.2 800 600 -0.0353",
    "query/day/nexus4/IMG_20140520_182846.jpg": "SIMPLE_RADIAL 1600 1200 1469.2 800 600 -0.0353019",
}
NIGHT_V10 = {"query/night/nexus5x/IMG_20161227_173116.jpg": "SIMPLE_RADIAL 1600 1200 1388.4 800 600 0.0129"}
NIGHT_V11 = {**NIGHT_V10,  # v1.1 adds night queries in their own folder
             "query/night/nexus5x_additional_night/IMG_20170702_005301.jpg":
                 "SIMPLE_RADIAL 1600 1200 1388.4 800 600 0.0129"}
# v1.1's database: the model's images, under db/ and under sequences/ (sequence frames share a camera)
V11_DB = ("db/1000.jpg", "db/1045.jpg", "sequences/gopro3_undistorted/gopro3_00146.png",
          "sequences/gopro3_undistorted/gopro3_00147.png", "sequences/nexus4_sequences/sequence_1/frame_0001.png")


def _pose(i: int) -> Pose:
    return Pose.look_at([3.0 * np.cos(i), 3.0 * np.sin(i), 1.0 + 0.1 * i], [0.0, 0.0, 0.5 * i])


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((12, 16, 3), 100, np.uint8))


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_queries(root: Path, images: Path, night: dict[str, str]) -> None:
    _write(root / DAY_LIST, "".join(f"{n} {c}\n" for n, c in DAY.items()))
    _write(root / NIGHT_LIST, "".join(f"{n} {c}\n" for n, c in night.items()))
    for n in list(DAY) + list(night):
        _image(root / images / n)


def write_v10_models(root: Path) -> dict[str, Pose]:
    """3D-models/aachen_cvpr2018_db.nvm and database_intrinsics.txt, as Aachen v1.0 ships them."""
    poses = {n: _pose(i) for i, n in enumerate(V10_DB)}
    lines = ["NVM_V3", "", str(len(V10_DB))]
    for n, (w, h, f, k) in V10_DB.items():
        q, c = poses[n].qvec, poses[n].center
        lines.append(f"{n} {f:.8f} " + " ".join(f"{x:.12f}" for x in (*q, *c)) + f" {k:.12f} 0")
    lines += ["", "2",  # points: xyz rgb, then <count> (<image index> <feature> <x> <y>)*
              "769.607 14.6241 19.7262 64 57 51 2 1 333 980.898 247.696 0 3358 1042.95 257.496",
              "650.802 -2.78686 -287.018 87 87 87 2 1 13334 954.981 669.264 2 14063 885.414 752.047", ""]
    _write(root / NVM, "\n".join(lines) + "\n")
    _write(root / DB_INTRINSICS, "".join(f"{n} SIMPLE_RADIAL {w} {h} {f} {w / 2:g} {h / 2:g} {k}\n"
                                         for n, (w, h, f, k) in V10_DB.items()))
    return poses


def make_v10(root: Path, images: Path = ROOT_IMAGES) -> dict[str, Pose]:
    poses = write_v10_models(root)
    for n in V10_DB:
        _image(root / images / n)
    write_queries(root, images, NIGHT_V10)
    return poses


V11_CAMS = {  # camera id: (COLMAP model, w, h, params)
    1: ("SIMPLE_RADIAL", 1600, 1063, (1469.2, 800, 531.5, -0.0353)),
    2: ("SIMPLE_RADIAL", 1600, 1200, (1084.59, 800, 600, 0.0811)),
    3: ("PINHOLE", 1280, 720, (640.5, 641.0, 640, 360)),  # the gopro frames share it
    4: ("SIMPLE_RADIAL", 1080, 1920, (1500.0, 540, 960, 0.01)),
}
V11_CAMERA_OF = dict(zip(V11_DB, (1, 2, 3, 3, 4)))


def write_v11_model(folder: Path, fmt: str) -> dict[str, Pose]:
    """A COLMAP model in Aachen v1.1's place, with a few triangulated points, written by pycolmap.

    fmt: 'bin' / 'txt' as Aachen ships it (cameras, images, points3D only), or 'bin+rigs' /
    'txt+rigs' as pycolmap 4.x writes it (with rigs and frames)."""
    import pycolmap
    poses = {n: _pose(20 + i) for i, n in enumerate(V11_DB)}
    src = folder.parent / (folder.name + ".src")  # our own text, the input pycolmap reads
    _write(src / "cameras.txt", "# CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]\n" + "".join(
        f"{i} {m} {w} {h} " + " ".join(f"{p:g}" for p in params) + "\n" for i, (m, w, h, params) in V11_CAMS.items()))
    img_lines = ["# IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME", "# POINTS2D[] as (X, Y, POINT3D_ID)"]
    for i, n in enumerate(V11_DB, start=1):
        q, t = poses[n].qvec, poses[n].t
        img_lines.append(f"{i} " + " ".join(f"{x:.15g}" for x in (*q, *t)) + f" {V11_CAMERA_OF[n]} {n}")
        img_lines.append("10.5 20.5 1 30.5 40.5 -1" + (" 50.5 60.5 2" if i <= 2 else ""))
    _write(src / "images.txt", "\n".join(img_lines) + "\n")
    tracks = {1: [(i, 0) for i in range(1, len(V11_DB) + 1)], 2: [(1, 2), (2, 2)]}
    _write(src / "points3D.txt", "# POINT3D_ID X Y Z R G B ERROR TRACK[]\n" + "".join(
        f"{pid} 0.1 0.2 {pid}.5 128 128 128 0.5 " + " ".join(f"{i} {k}" for i, k in tr) + "\n"
        for pid, tr in tracks.items()))
    rec = pycolmap.Reconstruction(str(src))
    shutil.rmtree(src)
    folder.mkdir(parents=True, exist_ok=True)
    ext = fmt.split("+")[0]
    (rec.write_binary if ext == "bin" else rec.write_text)(str(folder))
    if "+rigs" not in fmt:  # Aachen's model predates COLMAP 3.12's rigs and frames
        for f in ("rigs", "frames"):
            (folder / f"{f}.{ext}").unlink(missing_ok=True)
    files = ("cameras", "images", "points3D") + (("rigs", "frames") if "+rigs" in fmt else ())
    assert {p.name for p in folder.iterdir()} == {f"{f}.{ext}" for f in files}
    return poses


def make_v11(root: Path, fmt: str = "bin", images: Path = ROOT_IMAGES) -> dict[str, Pose]:
    poses = write_v11_model(root / V11_MODEL, fmt)
    for n in V11_DB:
        _image(root / images / n)
    write_queries(root, images, NIGHT_V11)
    return poses


def expect_error(fn, path: Path, *contains: str, line: int | None = None) -> DataError:
    e = expect_data_error(fn, path, line=line)
    for c in contains:
        assert c in str(e), (c, str(e))
    return e


# ---------------------------------------------------------------- v1.0
@pytest.mark.parametrize("images", [ROOT_IMAGES, IMAGES], ids=["images_upright", "images-images_upright"])
def test_v10_as_it_unpacks(tmp_path, images):
    poses = make_v10(tmp_path, images)
    ds = Dataset(tmp_path)
    s = ds.validate()
    assert s["database_images"] == 3 and s["queries"] == 3
    assert s["conditions"] == {"day": 2, "night": 1}
    assert s["pose_source"] == str(NVM) and s["version"] == "aachen_v1.0" and s["images"] == str(images)
    assert s["query_lists"] == [str(DAY_LIST), str(NIGHT_LIST)]
    assert ds.images_dir == tmp_path / images
    assert ds.image_path("db/1000.jpg") == tmp_path / images / "db/1000.jpg"
    assert ds.db_names == sorted(V10_DB)
    cams, got = ds.reference
    for n, (w, h, f, k) in V10_DB.items():
        assert cams[n] == CameraSpec("SIMPLE_RADIAL", w, h, (f, w / 2, h / 2, k))
        np.testing.assert_allclose(got[n].R, poses[n].R, atol=1e-9)
        np.testing.assert_allclose(got[n].center, poses[n].center, atol=1e-9)
    assert {n: q.condition for n, q in ds.queries.items()} == {
        **{n: "day" for n in DAY}, **{n: "night" for n in NIGHT_V10}}
    q = ds.queries["query/day/milestone/2010-10-30_17-47-25_73.jpg"]
    assert q.camera == CameraSpec("SIMPLE_RADIAL", 1600, 1200, (1469.2, 800.0, 600.0, -0.0353))


def test_v10_nvm_without_intrinsics(tmp_path):
    make_v10(tmp_path)
    (tmp_path / DB_INTRINSICS).unlink()
    expect_error(lambda: Dataset(tmp_path).validate(), tmp_path / DB_INTRINSICS, "missing", str(NVM))


def test_v10_database_image_missing_names_the_nvm_line(tmp_path):
    make_v10(tmp_path)
    (tmp_path / ROOT_IMAGES / "db/1045.jpg").unlink()
    nvm = tmp_path / NVM
    expect_error(lambda: Dataset(tmp_path).validate(), nvm, "'db/1045.jpg'",
                 str(tmp_path / ROOT_IMAGES / "db/1045.jpg"), line=line_of(nvm, "db/1045.jpg"))


# ---------------------------------------------------------------- image folders
def test_both_image_folders_is_an_error_naming_both(tmp_path):
    make_v10(tmp_path, ROOT_IMAGES)
    _image(tmp_path / IMAGES / "db/1000.jpg")
    e = expect_error(lambda: Dataset(tmp_path).validate(), tmp_path, str(tmp_path / ROOT_IMAGES),
                     str(tmp_path / IMAGES), "two images folders")
    assert "rsync" in str(e)


def test_no_image_folder_names_both_places(tmp_path):
    make_v10(tmp_path, ROOT_IMAGES)
    shutil.rmtree(tmp_path / ROOT_IMAGES)
    expect_error(lambda: Dataset(tmp_path).validate(), tmp_path / IMAGES, "images folder not found",
                 f"{ROOT_IMAGES}/", f"{IMAGES}/")


def test_images_folder_that_is_a_file_is_not_taken(tmp_path):
    make_v10(tmp_path, IMAGES)
    (tmp_path / ROOT_IMAGES).write_text("not a folder")
    assert Dataset(tmp_path).validate()["images"] == str(IMAGES)


# ---------------------------------------------------------------- v1.1
@pytest.mark.parametrize("fmt", ["bin", "txt", "bin+rigs", "txt+rigs"])
@pytest.mark.parametrize("images", [ROOT_IMAGES, IMAGES], ids=["images_upright", "images-images_upright"])
def test_v11_as_it_unpacks(tmp_path, fmt, images):
    poses = make_v11(tmp_path, fmt, images)
    ds = Dataset(tmp_path)
    s = ds.validate()
    assert s["database_images"] == len(V11_DB) and s["queries"] == 4
    assert s["conditions"] == {"day": 2, "night": 2}
    assert s["pose_source"] == str(V11_MODEL) and s["version"] == "aachen_v1.1" and s["images"] == str(images)
    # the database is the model's images, wherever they are: db/ and sequences/
    assert ds.db_names == sorted(V11_DB)
    assert [n for n in ds.db_names if not n.startswith("db/")] == sorted(V11_DB[2:])
    cams, got = ds.reference
    for n in V11_DB:
        m, w, h, params = V11_CAMS[V11_CAMERA_OF[n]]
        assert (cams[n].model, cams[n].width, cams[n].height) == (m, w, h)
        np.testing.assert_allclose(cams[n].params, params, rtol=1e-12)
        np.testing.assert_allclose(got[n].R, poses[n].R, atol=1e-9)
        np.testing.assert_allclose(got[n].t, poses[n].t, atol=1e-9)
    assert ds.queries["query/night/nexus5x_additional_night/IMG_20170702_005301.jpg"].condition == "night"
    assert ds.queries["query/night/nexus5x/IMG_20161227_173116.jpg"].condition == "night"


def test_v11_wins_over_v10_files_of_the_same_download(tmp_path):
    """Downloading the whole Aachen folder brings v1.0's NVM too: the v1.1 model is the reference."""
    make_v11(tmp_path)
    write_v10_models(tmp_path)
    ds = Dataset(tmp_path)
    s = ds.validate()
    assert s["version"] == "aachen_v1.1" and s["database_images"] == len(V11_DB)
    assert ds.db_names == sorted(V11_DB)


def test_v11_time_query_lists_and_other_lists(tmp_path):
    make_v11(tmp_path)
    # any *_queries_with_intrinsics.txt is read (the v1.0-era glob), *_without_intrinsics.txt is not
    _write(tmp_path / "queries/day_time_queries_without_intrinsics.txt", "query/day/nexus4/x.jpg\n")
    extra = _write(tmp_path / "queries/extra_queries_with_intrinsics.txt",
                   "query/day/nexus4/IMG_20140521_000000.jpg SIMPLE_RADIAL 1600 1200 1469.2 800 600 -0.0353\n")
    _image(tmp_path / ROOT_IMAGES / "query/day/nexus4/IMG_20140521_000000.jpg")
    ds = Dataset(tmp_path)
    assert ds.validate()["queries"] == 5
    assert ds.query_source["query/day/nexus4/IMG_20140521_000000.jpg"] == extra


@pytest.mark.parametrize("ext", ["bin", "txt"])
@pytest.mark.parametrize("gone", ["images", "cameras", "points3D"])
def test_v11_model_missing_a_file(tmp_path, ext, gone):
    make_v11(tmp_path, ext)
    (tmp_path / V11_MODEL / f"{gone}.{ext}").unlink()
    kind = "binary" if ext == "bin" else "text"
    expect_error(lambda: Dataset(tmp_path).validate(), tmp_path / V11_MODEL,
                 f"incomplete COLMAP {kind} model", f"{gone}.{ext}")


def test_v11_model_folder_empty(tmp_path):
    make_v11(tmp_path)
    shutil.rmtree(tmp_path / V11_MODEL)
    (tmp_path / V11_MODEL).mkdir()
    expect_error(lambda: Dataset(tmp_path).validate(), tmp_path / V11_MODEL, "not a COLMAP model",
                 "images.bin", "points3D.bin")


def test_v11_model_path_is_a_file(tmp_path):
    make_v11(tmp_path)
    shutil.rmtree(tmp_path / V11_MODEL)
    (tmp_path / V11_MODEL).write_text("")
    expect_error(lambda: Dataset(tmp_path).validate(), tmp_path / V11_MODEL, "found a file")


def test_v11_corrupt_model(tmp_path):
    make_v11(tmp_path)
    (tmp_path / V11_MODEL / "images.bin").write_bytes(b"\x05\x00")  # truncated
    expect_error(lambda: Dataset(tmp_path).validate(), tmp_path / V11_MODEL, "could not read the COLMAP model")


def test_v11_sequence_image_missing(tmp_path):
    make_v11(tmp_path)
    gone = "sequences/gopro3_undistorted/gopro3_00147.png"
    (tmp_path / ROOT_IMAGES / gone).unlink()
    expect_error(lambda: Dataset(tmp_path).validate(), tmp_path / V11_MODEL, repr(gone),
                 str(tmp_path / ROOT_IMAGES / gone), "aachen_v1_1.zip")
    assert Dataset(tmp_path).validate(check_images=False)["database_images"] == len(V11_DB)


def test_v11_new_night_query_image_missing_names_its_line(tmp_path):
    make_v11(tmp_path)
    q = "query/night/nexus5x_additional_night/IMG_20170702_005301.jpg"
    (tmp_path / ROOT_IMAGES / q).unlink()
    night = tmp_path / NIGHT_LIST
    expect_error(lambda: Dataset(tmp_path).validate(), night, repr(q), line=line_of(night, q))


# ---------------------------------------------------------------- missing pieces, any version
def test_no_database_poses_names_every_accepted_source(tmp_path):
    make_v10(tmp_path)
    shutil.rmtree(tmp_path / "3D-models")
    expect_error(lambda: Dataset(tmp_path).validate(), tmp_path, "no database poses", str(V11_MODEL), str(NVM),
                 str(DB_INTRINSICS), f"{REFERENCE}/")


def test_no_query_lists(tmp_path):
    make_v10(tmp_path)
    for f in (tmp_path / "queries").glob("*"):
        f.unlink()
    expect_error(lambda: Dataset(tmp_path).validate(), tmp_path / "queries", "no query list found",
                 "*_queries_with_intrinsics.txt", "night_time_queries_with_intrinsics.txt")
    shutil.rmtree(tmp_path / "queries")
    expect_error(lambda: Dataset(tmp_path).validate(), tmp_path / "queries", "queries folder not found")


def test_missing_dataset_folder(tmp_path):
    expect_error(lambda: Dataset(tmp_path / "aachen"), tmp_path / "aachen", "dataset folder not found")


# ---------------------------------------------------------------- the benchmark's results file
def good_results(ds: Dataset, path: Path) -> dict[str, str]:
    """A results file as localize writes it (basenames, write_poses); {basename: query}."""
    names = {ds.results_name(q): q for q in sorted(ds.queries)}
    write_poses(path, {r: _pose(i) for i, r in enumerate(names)})
    return names


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


@pytest.fixture(params=["v1.0", "v1.1"])
def aachen(request, tmp_path) -> Dataset:
    (make_v10 if request.param == "v1.0" else make_v11)(tmp_path / "aachen")
    return Dataset(tmp_path / "aachen")


def test_results_names_are_basenames(aachen):
    assert aachen.results_name("query/night/nexus5x/IMG_20161227_173116.jpg") == "IMG_20161227_173116.jpg"
    assert aachen.results_name("query/day/milestone/2010-10-30_17-47-25_73.jpg") == "2010-10-30_17-47-25_73.jpg"


def test_results_file_accepted(aachen, tmp_path):
    res = tmp_path / "results.txt"
    names = good_results(aachen, res)
    assert check_results_file(res, aachen) == len(aachen.queries)
    for ln in _lines(res):  # "<basename> qw qx qy qz tx ty tz"
        tok = ln.split()
        assert len(tok) == 8 and tok[0] in names and "/" not in tok[0]
    # order, a trailing blank line and tabs do not matter; a quaternion off by < 1e-3 is fine
    lines = _lines(res)[::-1]
    tok = lines[0].split()
    tok[1:5] = [f"{float(x) * 1.0009:.10g}" for x in tok[1:5]]
    lines[0] = "\t".join(tok) + "\n"
    res.write_text("".join(lines) + "\n")
    assert check_results_file(res, aachen) == len(aachen.queries)


def test_results_bad_quaternion(aachen, tmp_path):
    res = tmp_path / "results.txt"
    good_results(aachen, res)
    lines = _lines(res)
    tok = lines[1].split()
    tok[1:5] = ["0.7", "0.7", "0.1", "0.1"]  # norm 1.0
    lines[1] = " ".join(tok) + "\n"
    res.write_text("".join(lines))
    assert check_results_file(res, aachen) == len(aachen.queries)
    lines[1] = " ".join(tok[:1] + ["0.7", "0.7", "0.2", "0.1"] + tok[5:]) + "\n"  # norm 1.0149
    res.write_text("".join(lines))
    expect_error(lambda: check_results_file(res, aachen), res, "quaternion", "unit", line=2)


def test_results_missing_query(aachen, tmp_path):
    res = tmp_path / "results.txt"
    names = good_results(aachen, res)
    lines = _lines(res)
    gone = lines.pop(2).split()[0]
    res.write_text("".join(lines))
    q = names[gone]
    src = aachen.root / (NIGHT_LIST if "/night/" in q else DAY_LIST)
    expect_error(lambda: check_results_file(res, aachen), res, "1 of", "no pose", repr(gone), repr(q),
                 f"{src}, line {line_of(src, q)}")


def test_results_duplicate(aachen, tmp_path):
    res = tmp_path / "results.txt"
    good_results(aachen, res)
    lines = _lines(res)
    res.write_text("".join(lines + [lines[0]]))
    name = lines[0].split()[0]
    expect_error(lambda: check_results_file(res, aachen), res, repr(name), "second pose", "line 1",
                 line=len(lines) + 1)


def test_results_wrong_name(aachen, tmp_path):
    res = tmp_path / "results.txt"
    names = good_results(aachen, res)
    lines = _lines(res)
    base = lines[1].split()[0]
    lines[1] = lines[1].replace(base, names[base], 1)  # the query's path instead of its basename
    res.write_text("".join(lines))
    expect_error(lambda: check_results_file(res, aachen), res, repr(names[base]), f"basename {base!r}", line=2)
    lines[1] = lines[1].replace(names[base], "query/" + base, 1)  # another path to it
    res.write_text("".join(lines))
    expect_error(lambda: check_results_file(res, aachen), res, f"basename {base!r}", line=2)
    lines[1] = lines[1].replace("query/" + base, "IMG_00000000_000000.jpg", 1)
    res.write_text("".join(lines))
    expect_error(lambda: check_results_file(res, aachen), res, "'IMG_00000000_000000.jpg'", "not a query",
                 line=2)


@pytest.mark.parametrize("edit, reason", [
    (lambda tok: tok[:7], "8 fields"),
    (lambda tok: tok + ["0"], "8 fields"),
    (lambda tok: tok[:5] + ["nan"] + tok[6:], "non-finite"),
    (lambda tok: tok[:5] + ["1,5"] + tok[6:], "7 numbers"),
    (lambda tok: ["#"] + tok, "comment"),
])
def test_results_malformed_line(aachen, tmp_path, edit, reason):
    res = tmp_path / "results.txt"
    good_results(aachen, res)
    lines = _lines(res)
    lines[2] = " ".join(edit(lines[2].split())) + "\n"
    res.write_text("".join(lines))
    expect_error(lambda: check_results_file(res, aachen), res, reason, line=3)


def test_results_file_absent_or_empty(aachen, tmp_path):
    expect_error(lambda: check_results_file(tmp_path / "nope.txt", aachen), tmp_path / "nope.txt", "not found")
    (tmp_path / "empty.txt").write_text("")
    expect_error(lambda: check_results_file(tmp_path / "empty.txt", aachen), tmp_path / "empty.txt",
                 f"{len(aachen.queries)} of {len(aachen.queries)} queries have no pose")


def test_evaluate_reports_the_benchmark_format(tmp_path, capsys):
    """The evaluate step checks every results file it evaluates and says whether it could be submitted."""
    from mmcrossvit import cli
    from mmcrossvit.paths import RunLayout
    from mmcrossvit.steps import evaluate as evaluate_step
    root = tmp_path / "aachen"
    make_v11(root)
    ds = Dataset(root)
    gt = {q: _pose(40 + i) for i, q in enumerate(sorted(ds.queries))}
    write_poses(root / GT_POSES, gt)
    write_poses(tmp_path / "good.txt", {ds.results_name(q): p for q, p in gt.items()})
    write_poses(tmp_path / "full.txt", gt)  # full names: evaluated, but not the benchmark's format
    argv = ["--dataset", str(root), "--name", "eval", "--outputs", str(tmp_path / "outputs"), "--database-root",
            str(tmp_path / "DataBase"), "--preset", "tiny", "--results", f"good={tmp_path / 'good.txt'}",
            "--results", f"full={tmp_path / 'full.txt'}"]
    report = cli.main(evaluate_step, argv)
    assert report["localization"]["good"]["all"]["recall"] == [100.0] * 3
    assert report["localization"]["full"]["all"]["recall"] == [100.0] * 3
    assert report["benchmark_format"]["good"] == "ok"
    first = sorted(gt)[0]
    assert "line 1" in report["benchmark_format"]["full"] and repr(first) in report["benchmark_format"]["full"]
    assert "not in the benchmark's format" in capsys.readouterr().err
    md = RunLayout.create(root, "eval", tmp_path / "outputs").evaluation_md.read_text()
    assert "Not in the benchmark's format" in md and str(tmp_path / "full.txt") in md
