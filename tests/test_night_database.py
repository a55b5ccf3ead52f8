"""The synthetic town's night database renderings (night_db): `db/<stem>_cyclegan.jpg` beside each
database image, the stand-in for the authors' CycleGAN night versions of the database images."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from datasets.synthetic_town import generate, night_db_name, render_night_database
from datasets.synthetic_town.__main__ import main as cli_main
from mmcrossvit.data import cyclegan_path
from mmcrossvit.layout import IMAGES, Dataset
from mmcrossvit.presets import PRESETS
from mmcrossvit.storage import read_json

# the tiny preset's 320 x 240 images on a one-block town; night renderings at night_db_scale 0.5
SMALL = dict(blocks_x=1, blocks_y=1, num_db=5, num_day=1, num_night=1, detail_tile=256)
SEED = 5


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _night_files(root):
    return sorted(p.relative_to(root / IMAGES).as_posix() for p in (root / IMAGES / "db").rglob("*_cyclegan*"))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("night_db")


@pytest.fixture(scope="module")
def night_ds(base):
    """A small town generated with its database at night."""
    return generate(base / "night", "tiny", seed=SEED, progress=False, night_db=True, **SMALL)


@pytest.fixture(scope="module")
def plain_ds(base):
    """The same town generated without (pristine: copy it before changing it)."""
    return generate(base / "plain", "tiny", seed=SEED, progress=False, **SMALL)


def test_presets():
    # demo renders them, the tests' tiny preset does not (tests opt in with night_db=True)
    assert PRESETS["demo"]["generate"]["night_db"] is True
    assert 0 < PRESETS["demo"]["generate"]["night_db_scale"] <= 1
    assert PRESETS["tiny"]["generate"]["night_db"] is False


def test_a_night_rendering_beside_each_database_image(night_ds):
    ds = Dataset(night_ds)
    cams, _ = ds.reference
    scale = read_json(night_ds / "scene.json")["params"]["night_db_scale"]
    assert scale == PRESETS["tiny"]["generate"]["night_db_scale"] == 0.5
    assert len(ds.db_names) == SMALL["num_db"]
    assert _night_files(night_ds) == sorted(night_db_name(n) for n in ds.db_names)
    for name in ds.db_names:
        # where the trainers look for a database image's night version
        path = cyclegan_path(ds.image_path(name))
        assert path == ds.image_path(night_db_name(name)) and path.is_file()
        night, day = cv2.imread(str(path)), cv2.imread(str(ds.image_path(name)))
        cam = cams[name]
        assert day.shape[:2] == (cam.height, cam.width)
        assert night.shape[:2] == (round(cam.height * scale), round(cam.width * scale))
        # night: darker than the day image of the same view
        assert night.mean() < 0.75 * day.mean(), (name, night.mean(), day.mean())
    meta = read_json(night_ds / "scene.json")
    assert meta["counts"]["db_night"] == SMALL["num_db"] and meta["params"]["night_db"] is True


def test_night_renderings_are_no_database_images(night_ds):
    ds = Dataset(night_ds)
    summary = ds.validate()
    assert summary["database_images"] == SMALL["num_db"]
    assert not any("_cyclegan" in n for n in list(ds.db_names) + list(ds.queries))
    for rel in ("3D-models", "reference", "queries", "ground_truth"):
        for f in (night_ds / rel).rglob("*"):
            if f.is_file():
                assert "_cyclegan" not in f.read_text(), f


def test_night_renderings_are_deterministic(night_ds, base):
    again = _files(generate(base / "again", "tiny", seed=SEED, progress=False, night_db=True, **SMALL))
    assert again == _files(night_ds), "the same seed must give identical files"
    other = generate(base / "other", "tiny", seed=SEED + 1, progress=False, night_db=True, **SMALL)
    for name in _night_files(night_ds):
        assert (other / IMAGES / name).read_bytes() != again[f"{IMAGES.as_posix()}/{name}"]


def test_render_night_database_adds_exactly_them(night_ds, plain_ds, base, capsys):
    ds = shutil.copytree(plain_ds, base / "upgrade")
    before = _files(ds)
    assert _night_files(ds) == []
    # generate() says how to add them instead of calling the dataset merely "different"
    with pytest.raises(FileExistsError, match="render_night_database"):
        generate(ds, "tiny", seed=SEED, progress=False, night_db=True, **SMALL)
    written = render_night_database(ds, "tiny", seed=SEED, progress=False)
    after = _files(ds)
    added = sorted(set(after) - set(before))
    assert added == [f"{IMAGES.as_posix()}/{n}" for n in _night_files(night_ds)]
    assert sorted(p.relative_to(ds).as_posix() for p in written) == added
    # every image and list is left byte for byte; only the description and contact sheet change
    changed = sorted(k for k in before if before[k] != after[k])
    assert changed == ["contact_sheet.png", "scene.json"]
    # and the result is what generate() makes with night_db on
    assert after == _files(night_ds)
    capsys.readouterr()
    assert generate(ds, "tiny", seed=SEED, progress=False, night_db=True, **SMALL) == ds
    assert "already generated" in capsys.readouterr().out

    # nothing missing: nothing written, nothing touched
    stamps = {p: p.stat().st_mtime_ns for p in ds.rglob("*") if p.is_file()}
    assert render_night_database(ds, "tiny", seed=SEED, progress=False) == []
    assert {p: p.stat().st_mtime_ns for p in ds.rglob("*") if p.is_file()} == stamps
    # one missing (or of another size): only that one is rendered again, identical
    lost = ds / IMAGES / _night_files(ds)[2]
    lost.unlink()
    assert render_night_database(ds, "tiny", seed=SEED, progress=False) == [lost]
    assert _files(ds) == after
    # the scene itself cannot be changed here
    with pytest.raises(ValueError, match="width"):
        render_night_database(ds, "tiny", seed=SEED, progress=False, width=160)
    with pytest.raises(ValueError, match="seed"):
        render_night_database(ds, "tiny", seed=SEED + 1, progress=False)


def test_regenerating_removes_stale_night_renderings(night_ds, base):
    ds = shutil.copytree(night_ds, base / "regen")
    generate(ds, "tiny", seed=SEED, progress=False, overwrite=True, **SMALL)
    assert _night_files(ds) == []
    assert "db_night" not in read_json(ds / "scene.json")["counts"]


def test_contact_sheet_row(night_ds, plain_ds):
    night = cv2.imread(str(night_ds / "contact_sheet.png"))
    plain = cv2.imread(str(plain_ds / "contact_sheet.png"))
    assert night.shape[1] == plain.shape[1] and night.shape[0] == plain.shape[0] * 4 // 3


def test_command_line_flag(base):
    out = base / "cli"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    assert cli_main(["--out", str(out), "--seed", str(SEED), "--quiet", "--night-db", "no", "--num-db", "2"]
                    + [f for f in flags if not f.startswith("--num-db")]) == 0
    assert _night_files(out) == [] and read_json(out / "scene.json")["params"]["night_db"] is False
    assert cli_main(["--out", str(out / "n"), "--seed", str(SEED), "--quiet", "--night-db", "true",
                     "--night-db-scale", "0.25", "--num-db", "2"]
                    + [f for f in flags if not f.startswith("--num-db")]) == 0
    assert [cv2.imread(str(out / "n" / IMAGES / n)).shape[:2] for n in _night_files(out / "n")] == [(60, 80)] * 2
