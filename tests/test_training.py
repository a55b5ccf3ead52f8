"""Training steps and their shared machinery, on a small synthetic spatial DB (seconds on CPU).

The fixture writes what preprocessing and generate_RoPE_embeddings would: 24 database images in
4 places (images of a place share 3D points: positives; different places share none: negatives),
random 3 x 3 spatial tokens, and small images whose colour depends on the place.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mmcrossvit import spatial_db
from mmcrossvit.errors import DataError
from mmcrossvit.paths import RunLayout
from mmcrossvit.storage import write_safetensors
from mmcrossvit.train import checkpoint, negatives, optim, validation

REPO = Path(__file__).resolve().parents[1]
PLACES, PER_PLACE, GRID, TOK = 4, 6, 3, 16
# the teacher accepts any multiple of 12; the image-only models need 120
FAST = ["--preset", "tiny", "--img-size", "48", "--threads", "1", "--eval-batch-size", "32"]


def make_run(root: Path, name: str = "toy") -> dict:
    """Dataset images, DataBase/<name>/spatial_db.npz and spatial_tokens.safetensors under root."""
    rng = np.random.default_rng(0)
    names = [f"db/p{p}_{k}.png" for p in range(PLACES) for k in range(PER_PLACE)]
    ii, pp = [], []
    for i in range(len(names)):
        place = i // PER_PLACE
        pts = place * 40 + rng.choice(40, 30, replace=False)  # points of its place only
        ii.append(np.full(len(pts), i))
        pp.append(pts)
    xyz = np.concatenate([rng.normal(loc=10 * p, scale=1.0, size=(40, 3)) for p in range(PLACES)])
    db = spatial_db.build(names, np.concatenate(ii), np.concatenate(pp), xyz, min_shared=8, folds=3, seed=0)
    dataset = root / "dataset"
    paths = RunLayout.create(dataset, name, root / "outputs", root / "DataBase")
    db.save(paths.spatial_db)
    tokens = rng.normal(size=(len(names), 1 + GRID * GRID, TOK)).astype(np.float16)
    valid = (rng.random((len(names), GRID * GRID)) > 0.2).astype(np.uint8)
    write_safetensors(paths.tokens, {"tokens": torch.from_numpy(tokens), "valid": torch.from_numpy(valid),
                                     "points": torch.zeros(len(names), GRID * GRID, 3)},
                      metadata={"names": json.dumps(names), "params": json.dumps({"grid": GRID, "dim": TOK})})
    colours = rng.integers(0, 255, (PLACES, 3))
    for i, n in enumerate(names):
        img = np.clip(colours[i // PER_PLACE] + rng.normal(0, 25, (64, 64, 3)), 0, 255).astype(np.uint8)
        p = dataset / "images/images_upright" / n
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), img)
    return {"root": root, "name": name, "dataset": dataset, "paths": paths, "db": db,
            "args": ["--dataset", str(dataset), "--name", name, "--outputs", str(root / "outputs"),
                     "--database-root", str(root / "DataBase")]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("train"))


def teacher_main(argv):
    import train_multimodal_crossvit_teacher as script
    return script.main(argv)


def student_main(argv):
    import train_knowledge_distillation_student as script
    return script.main(argv)


def state_of(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def teacher(run):
    """A tiny teacher at the default place, where the student looks for it."""
    teacher_main(run["args"] + FAST)
    return run["paths"].teacher_checkpoint


# --- pieces ------------------------------------------------------------------------------------

def test_negative_weights_hard_favours_close_authors_far():
    d = np.array([[0.2, 0.6, 1.0, 1.4, 0.1]])
    mask = np.array([[True, True, True, True, False]])
    hard = negatives.negative_weights(d, mask, "hard", tau=0.1)[0]
    authors = negatives.negative_weights(d, mask, "authors")[0]
    uniform = negatives.negative_weights(d, mask, "uniform")[0]
    for w in (hard, authors, uniform):
        assert w[4] == 0 and np.isclose(w.sum(), 1)
    assert np.all(np.diff(hard[:4]) < 0)       # closer negative, more likely
    assert np.all(np.diff(authors[:4]) > 0)    # farther negative, more likely
    np.testing.assert_allclose(uniform[:4], 0.25)
    np.testing.assert_allclose(negatives.negative_weights(None, mask, "hard")[0], uniform)  # before any refresh
    assert not negatives.negative_weights(d, np.zeros_like(mask), "hard").any()


def test_sample_negatives_respects_the_db_and_mines_close_ones(run):
    db = run["db"]
    n = len(db.names)
    allowed = np.ones(n, dtype=bool)
    allowed[:3] = False
    anchors = np.repeat(np.arange(n), 50)
    emb = torch.nn.functional.normalize(torch.randn(n, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    picks = {m: negatives.sample_negatives(np.random.default_rng(0), anchors, db, allowed, emb, m, tau=0.05)
             for m in ("hard", "authors", "uniform")}
    for m, neg in picks.items():
        assert (neg >= 3).all(), m                                       # never outside the allowed folds
        assert (neg // PER_PLACE != anchors // PER_PLACE).all(), m       # never an image sharing points
    dist = torch.cdist(emb, emb).numpy()
    mean_d = {m: dist[anchors, neg].mean() for m, neg in picks.items()}
    assert mean_d["hard"] < mean_d["uniform"] < mean_d["authors"]


def test_hflip_tokens_mirrors_the_grid_with_the_pixels():
    from mmcrossvit.data import hflip_tokens
    g = 3
    tok = torch.arange((1 + g * g) * 2, dtype=torch.float32).reshape(1 + g * g, 2)
    val = torch.tensor([1, 0, 0, 1, 1, 0, 0, 0, 1], dtype=torch.bool)
    ft, fv = hflip_tokens(tok, val, g)
    assert torch.equal(ft[0], tok[0])                                    # camera token kept
    for r in range(g):
        for c in range(g):
            assert torch.equal(ft[1 + r * g + c], tok[1 + r * g + (g - 1 - c)])
            assert fv[r * g + c] == val[r * g + (g - 1 - c)]
    back = hflip_tokens(ft, fv, g)
    assert torch.equal(back[0], tok) and torch.equal(back[1], val)


def test_retrieval_recall_and_precision(run):
    db = run["db"]
    n = len(db.names)
    place = np.arange(n) // PER_PLACE
    gallery = torch.nn.functional.one_hot(torch.from_numpy(place), PLACES).float()
    gallery = gallery + 0.01 * torch.randn(n, PLACES, generator=torch.Generator().manual_seed(0))
    m = validation.retrieval(gallery, np.arange(n), db)
    assert m["anchors"] == n and m["R"][1] == 1.0 and m["R"][5] == 1.0
    assert m["P"][5] == 1.0 and np.isclose(m["P"][10], (PER_PLACE - 1) / 10)
    shuffled = gallery[torch.randperm(n, generator=torch.Generator().manual_seed(1))]
    assert validation.retrieval(shuffled, np.arange(n), db)["R"][1] < 1.0
    night = validation.retrieval(gallery, np.arange(4), db, queries=gallery[:4])
    assert night["R"][1] == 1.0 and night["anchors"] == 4


@pytest.fixture
def one_thread():
    # the scripts run with --threads 1 too: on a small, shared CPU more threads only contend
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_a_few_steps_reduce_both_losses(one_thread):
    from mmcrossvit.losses import contrastive_loss, relaxed_contrastive_loss
    from models.build import build_teacher
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    teacher = build_teacher(48, grid=GRID, token_dim=TOK, embed_dim=32)
    x, tok = torch.randn(8, 3, 48, 48, generator=g), torch.randn(8, 1 + GRID * GRID, TOK, generator=g)
    y = torch.tensor([1.0, 0.8, 0.0, 0.0])
    opt = optim.make_optimizer(teacher, "adamw", 1e-3, 0.0, 0.9)

    def teacher_loss():
        e = teacher(x, tok)
        return contrastive_loss(e[:4], e[4:], y)

    first = teacher_loss().item()
    for _ in range(8):
        optim.optimizer_step(teacher, opt, None, teacher_loss(), grad_clip=1.0)
    assert teacher_loss().item() < 0.5 * first

    # the distillation loss on the same small model (the student itself runs in the script tests)
    torch.manual_seed(1)
    model = build_teacher(48, grid=GRID, token_dim=TOK, embed_dim=32)
    target = torch.nn.functional.normalize(torch.randn(8, 32, generator=g), dim=1)
    opt = optim.make_optimizer(model, "adamw", 1e-4, 0.0, 0.9)  # the KD loss needs a small lr at init
    first = relaxed_contrastive_loss(model(x, tok), target).item()
    for _ in range(10):
        optim.optimizer_step(model, opt, None, relaxed_contrastive_loss(model(x, tok), target), grad_clip=1.0)
    assert relaxed_contrastive_loss(model(x, tok), target).item() < 0.9 * first


def test_lr_schedule():
    s = {"kind": "cosine", "lr": 1.0, "min_ratio": 0.1, "warmup_steps": 2, "total_steps": 12}
    lrs = [optim.lr_at(i, s) for i in range(12)]
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[2] == 1.0
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] > 0.1
    assert optim.lr_at(100, s) == pytest.approx(0.1)
    assert optim.lr_at(5, {**s, "kind": "constant"}) == 1.0


# --- the steps, through their scripts -----------------------------------------------------------------------------------

def test_teacher_resume_reproduces_the_uninterrupted_run(run, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    a = teacher_main(run["args"] + FAST + ["--out", str(full)])
    assert a["finished"] and a["epochs_done"] == 2 and a["best"]["R@1"] >= 0
    b = teacher_main(run["args"] + FAST + ["--out", str(cut), "--stop-after", "1"])
    assert not b["finished"] and b["epochs_done"] == 1
    with pytest.raises(DataError, match=r"unfinished run trained from other inputs or settings \(changed: lr\)"):
        teacher_main(run["args"] + FAST + ["--out", str(cut), "--lr", "5e-4"])   # never mixed, never overwritten
    c = teacher_main(run["args"] + FAST + ["--out", str(cut)])          # the same command continues it
    assert c["finished"] and c["steps"] == a["steps"]
    A, C = state_of(full / "last.pt"), state_of(cut / "last.pt")
    assert_same_tensors(A["model"], C["model"])
    assert A["optimizer"]["state"].keys() == C["optimizer"]["state"].keys()
    for k in A["optimizer"]["state"]:
        assert_same_tensors(A["optimizer"]["state"][k], C["optimizer"]["state"][k])
    assert A["best"] == C["best"] and A["step"] == C["step"]
    assert torch.equal(A["extra"]["mined"], C["extra"]["mined"])      # hard negatives from the same model
    # a finished run is skipped, not retrained
    assert teacher_main(run["args"] + FAST + ["--out", str(full)])["wall_seconds"] == a["wall_seconds"]


def test_checkpoints_load_with_weights_only_and_rebuild(teacher):
    from mmcrossvit.train.weights import load_model
    for name in ("best.pt", "last.pt"):
        ck = state_of(teacher.parent / name)
        assert ck["format"] == checkpoint.FORMAT and ck["kind"] == "teacher"
        assert ck["config"] == {"arch": "teacher", "img_size": 48, "grid": GRID, "token_dim": TOK,
                                "embed_dim": 32, "drop_path_rate": 0.0}
        assert {"optimizer", "epoch", "step", "rng", "args", "best", "schedule"} <= ck.keys()
    model = load_model(teacher)
    out = model(torch.randn(2, 3, 48, 48), torch.randn(2, 1 + GRID * GRID, TOK))
    assert out.shape == (2, 32)
    summary = json.loads((teacher.parent / "summary.json").read_text())
    assert summary["finished"] and summary["images_per_s"] > 0


def test_checkpoint_of_another_embedding_size_is_rejected(run, teacher):
    with pytest.raises(DataError, match=r"other inputs or settings \(changed: embed_dim\)"):
        teacher_main(run["args"] + FAST + ["--resume", "--embed-dim", "16"])
    with pytest.raises(DataError, match="embed_dim"):
        checkpoint.load_checkpoint(teacher, "teacher", {**state_of(teacher)["config"], "embed_dim": 1000})
    with pytest.raises(DataError, match="not a student run"):
        checkpoint.load_checkpoint(teacher, "student")


def test_image_only_ablation(run):
    s = teacher_main(run["args"] + FAST + ["--img-size", "120", "--image-only", "--epochs", "1"])
    out = run["paths"].train_dir("image_only")
    assert s["kind"] == "image_only" and (out / "best.pt").exists()
    assert state_of(out / "best.pt")["config"]["arch"] == "student"


def test_student_distils_and_resumes_exactly(run, teacher, tmp_path):
    args = run["args"] + ["--preset", "tiny", "--threads", "1", "--val-every", "0"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    a = student_main(args + ["--out", str(full)])
    assert a["finished"] and a["teacher_val"]["R@1"] >= 0
    student_main(args + ["--out", str(cut), "--stop-after", "1"])
    student_main(args + ["--out", str(cut), "--resume"])
    assert_same_tensors(state_of(full / "last.pt")["model"], state_of(cut / "last.pt")["model"])
    ck = state_of(full / "best.pt")
    assert ck["kind"] == "student" and ck["extra"]["teacher_config"]["arch"] == "teacher"
    assert ck["config"]["arch"] == "student" and ck["config"]["img_size"] == 120


def test_a_retrained_teacher_retrains_its_student(tmp_path, capsys):
    """A finished run is reused only while its inputs and settings are the same."""
    r = make_run(tmp_path)
    targs = r["args"] + FAST + ["--val-every", "0"]
    sargs = r["args"] + ["--preset", "tiny", "--threads", "1", "--val-every", "0", "--epochs", "1"]
    t1, s1 = teacher_main(targs), student_main(sargs)
    assert teacher_main(targs)["wall_seconds"] == t1["wall_seconds"]   # same inputs: skipped
    assert student_main(sargs)["wall_seconds"] == s1["wall_seconds"]
    capsys.readouterr()
    teacher_main(targs + ["--lr", "5e-4"])
    assert "the finished run is stale (changed: lr): retraining from scratch" in capsys.readouterr().out
    student_main(sargs)
    assert "the finished run is stale (changed: teacher): retraining from scratch" in capsys.readouterr().out
    with pytest.raises(DataError, match=r"\(changed: sigma\); continuing would mix them"):
        student_main(sargs + ["--resume", "--sigma", "2"])
    assert student_main(sargs + ["--resume", "--epochs", "2"])["epochs_done"] == 2  # more epochs: allowed


def test_a_teacher_checkpoint_where_a_student_is_expected_is_one_clear_error(run, teacher):
    import generate_localization_pairs as script
    with pytest.raises(DataError, match=r"best.pt: holds a multi-modal teacher \(needs 3D tokens\), but an "
                                        r"image-only CrossViT \(student\) is expected here"):
        script.main(run["args"] + ["--checkpoint", str(teacher)])
    r = subprocess.run([sys.executable, str(REPO / "generate_localization_pairs.py"), *run["args"],
                        "--checkpoint", str(teacher)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: ")
