"""The student's recipe: geometric augmentation, the calibrated kernel width, night renderings as
training inputs, and initialisation from a saved state dict."""
from __future__ import annotations

import argparse
import shutil

import cv2
import numpy as np
import pytest
import torch

from mmcrossvit.data import PORTRAIT_WIDTH, Geometry, cyclegan_path, geometric_view
from mmcrossvit.errors import DataError
from mmcrossvit.losses import calibrated_sigma
from mmcrossvit.storage import read_json, read_npz, write_safetensors
from mmcrossvit.steps.student import KERNEL_FILE, sigma_value

from tests.test_training import FAST, make_run, state_of, student_main, teacher_main


def stripes(size: int = 120) -> np.ndarray:
    """Vertical colour stripes: where a crop came from shows in its columns."""
    x = np.zeros((size, size, 3), np.uint8)
    x[..., 0] = np.linspace(0, 255, size, dtype=np.uint8)[None, :]
    x[..., 1] = 128
    return x


def test_inactive_geometry_returns_the_image_and_draws_nothing():
    rng = np.random.default_rng(0)
    img = stripes()
    assert geometric_view(img, rng, Geometry()) is img
    assert rng.random() == np.random.default_rng(0).random()


def test_portrait_view_is_a_narrow_full_height_window_stretched_to_the_square():
    img = stripes()
    out = geometric_view(img, np.random.default_rng(1), Geometry(portrait_prob=1.0))
    assert out.shape == img.shape
    # the output's columns span PORTRAIT_WIDTH of the source's red ramp, rows are unchanged
    span = (int(out[60, -1, 0]) - int(out[60, 0, 0])) / 255
    assert span == pytest.approx(PORTRAIT_WIDTH, abs=0.03)
    assert np.abs(out[:, 60].astype(int) - out[0, 60].astype(int)).max() <= 1


def test_crops_zoom_in_and_roll_turns_the_image():
    img = stripes()
    spans = [(int(o[60, -1, 0]) - int(o[60, 0, 0])) / 255
             for o in (geometric_view(img, np.random.default_rng(s), Geometry(crop_scale=0.5)) for s in range(20))]
    assert all(0.5 ** 0.5 * 0.75 - 0.03 < s <= 1.0 + 1e-6 for s in spans) and min(spans) < 0.9
    # a rolled image's red ramp is no longer constant down a column: 50 rows from the centre, a roll
    # of up to 30 degrees shifts it by up to 29 px (61 grey levels); without roll it stays put
    def tilt(geo, seed):
        o = geometric_view(img, np.random.default_rng(seed), geo)
        return np.abs(o[10:110, 60, 0].astype(int) - int(o[60, 60, 0])).max()
    assert 25 < max(tilt(Geometry(roll=30.0), s) for s in range(10)) <= 63
    assert max(tilt(Geometry(portrait_prob=0.5), s) for s in range(10)) <= 1
    rolled = geometric_view(img, np.random.default_rng(3), Geometry(roll=10.0))
    again = geometric_view(img, np.random.default_rng(3), Geometry(roll=10.0))
    assert np.array_equal(rolled, again)


def test_calibrated_sigma_puts_half_weight_at_the_median_positive():
    d2 = torch.tensor([0.1, 0.2, 0.3])
    s = calibrated_sigma(d2)
    assert np.exp(-0.2 / s) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        calibrated_sigma(torch.zeros(0))
    assert sigma_value("auto") == "auto" and sigma_value("0.5") == 0.5
    for bad in ("-1", "0", "wide"):
        with pytest.raises(argparse.ArgumentTypeError):
            sigma_value(bad)


def test_student_with_auto_sigma_and_geometry_records_its_kernel(tmp_path):
    r = make_run(tmp_path)
    teacher_main(r["args"] + FAST + ["--val-every", "0"])
    out = tmp_path / "student"
    s = student_main(r["args"] + ["--preset", "tiny", "--threads", "1", "--val-every", "0", "--epochs", "1",
                                  "--sigma", "auto", "--crop-scale", "0.6", "--portrait-prob", "0.3",
                                  "--roll", "5", "--out", str(out)])
    k = read_npz(out / KERNEL_FILE)
    assert s["kernel"]["sigma"] == pytest.approx(float(k["sigma"]))
    assert float(k["sigma"]) == pytest.approx(calibrated_sigma(torch.from_numpy(k["positive_d2"])))
    assert len(k["positive_d2"]) > 0 and len(k["negative_d2"]) > 0
    assert read_json(r["paths"].settings("student"))["settings"]["portrait_prob"] == 0.3


def test_the_teacher_refuses_geometric_augmentation(tmp_path):
    r = make_run(tmp_path)
    with pytest.raises(DataError, match="need --image-only"):
        teacher_main(r["args"] + FAST + ["--crop-scale", "0.5"])


def test_night_renderings_are_training_inputs(tmp_path, capsys):
    """Adding a <name>_cyclegan file retrains; --no-cyclegan ignores them."""
    r = make_run(tmp_path)
    args = r["args"] + FAST + ["--image-only", "--img-size", "120", "--epochs", "1", "--val-every", "0"]
    first = teacher_main(args)
    assert teacher_main(args)["wall_seconds"] == first["wall_seconds"]
    img = r["dataset"] / "images/images_upright" / str(r["db"].names[0])
    night = cyclegan_path(img)
    cv2.imwrite(str(night), (cv2.imread(str(img)) // 4))
    capsys.readouterr()
    teacher_main(args)
    out = capsys.readouterr().out
    assert "changed: night_images" in out and "1 CycleGAN night images" in out
    off = teacher_main(args + ["--no-cyclegan"])
    assert "0 CycleGAN night images" in capsys.readouterr().out and off["finished"]


def test_init_from_a_saved_state_dict(tmp_path):
    """--init takes a safetensors state dict (as a timm model saved on a machine with internet
    would be) or a weights_only checkpoint; matching tensors start from it."""
    from models.build import build_student
    r = make_run(tmp_path)
    src = build_student(img_size=120, embed_dim=32)
    with torch.no_grad():
        for p in src.parameters():
            p.fill_(0.01)
    path = tmp_path / "init.safetensors"
    write_safetensors(path, {k: v.contiguous() for k, v in src.state_dict().items()})
    args = r["args"] + FAST + ["--image-only", "--img-size", "120", "--embed-dim", "32", "--epochs", "1",
                               "--val-every", "0", "--lr", "1e-9", "--weight-decay", "0", "--hflip", "0"]
    teacher_main(args + ["--init", str(path), "--out", str(tmp_path / "a")])
    w = state_of(tmp_path / "a" / "last.pt")["model"]["blocks.0.blocks.0.0.attn.qkv.weight"]
    assert torch.allclose(w, torch.full_like(w, 0.01), atol=1e-4)  # a near-zero lr keeps the init
    shutil.copy(tmp_path / "a" / "last.pt", tmp_path / "ck.pt")
    teacher_main(args + ["--init-from", str(tmp_path / "ck.pt"), "--out", str(tmp_path / "b")])
    w2 = state_of(tmp_path / "b" / "last.pt")["model"]["blocks.0.blocks.0.0.attn.qkv.weight"]
    assert torch.allclose(w2, w, atol=1e-4)


def test_regression_term_pulls_each_image_to_its_teacher_embedding():
    from mmcrossvit.losses import embedding_regression_loss
    t = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    assert float(embedding_regression_loss(2 * t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(embedding_regression_loss(-t, t)) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="embedding size"):
        embedding_regression_loss(t[:, :4], t)


def test_regression_needs_the_teachers_embedding_size(tmp_path):
    r = make_run(tmp_path)
    teacher_main(r["args"] + FAST + ["--val-every", "0"])
    args = r["args"] + ["--preset", "tiny", "--threads", "1", "--val-every", "0", "--epochs", "1", "--regression", "1"]
    assert student_main(args + ["--out", str(tmp_path / "ok")])["finished"]
    with pytest.raises(DataError, match="--regression needs --embed-dim 32"):
        student_main(args + ["--embed-dim", "16", "--out", str(tmp_path / "bad")])
