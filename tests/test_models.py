"""Student/teacher CrossViTs, their losses and checkpoint loading (small sizes: CPU-friendly)."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from mmcrossvit.losses import contrastive_loss, relaxed_contrastive_loss
from mmcrossvit.train.weights import load_init, load_pretrained_timm
from models.build import build_model, build_student, build_teacher

torch.set_num_threads(2)

# smallest sizes the geometry allows: the student needs multiples of 120, the teacher of 12
S_IMG, T_IMG, GRID, TOK, EMB = 120, 48, 3, 16, 32


@pytest.fixture
def student():
    torch.manual_seed(0)
    return build_student(S_IMG, EMB)


@pytest.fixture
def teacher():
    torch.manual_seed(0)
    return build_teacher(T_IMG, grid=GRID, token_dim=TOK, embed_dim=EMB)


def teacher_batch(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 3, T_IMG, T_IMG, generator=g), torch.randn(b, 1 + GRID * GRID, TOK, generator=g))


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# --- models -----------------------------------------------------------------------------------

def test_student_shape_and_norm(student):
    out = student.eval()(torch.randn(3, 3, S_IMG, S_IMG))
    assert out.shape == (3, EMB)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))


def test_teacher_shape_and_norm_with_and_without_mask(teacher):
    teacher.eval()
    images, tokens = teacher_batch(2)
    valid = torch.ones(2, GRID * GRID, dtype=torch.bool)
    valid[0, :4] = False
    plain, masked = teacher(images, tokens), teacher(images, tokens, valid)
    for out in (plain, masked):
        assert out.shape == (2, EMB)
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    # all-valid mask == no mask; masking changes only the masked sample
    torch.testing.assert_close(teacher(images, tokens, torch.ones_like(valid)), plain)
    assert not torch.allclose(masked[0], plain[0])
    torch.testing.assert_close(masked[1], plain[1])
    # masked patches ignore whatever the encoder wrote there
    junk = tokens.clone()
    junk[0, 1:5] = 1e3
    torch.testing.assert_close(teacher(images, junk, valid), masked)


def test_teacher_uses_camera_token(teacher):
    images, tokens = teacher_batch(1)
    moved = tokens.clone()
    moved[:, 0] += 1
    assert not torch.allclose(teacher.eval()(images, tokens), teacher(images, moved))


def test_teacher_rejects_bad_tokens(teacher):
    images, tokens = teacher_batch(2)
    with pytest.raises(ValueError, match="camera token first"):
        teacher(images, tokens[:, 1:])
    with pytest.raises(ValueError, match="valid mask"):
        teacher(images, tokens, torch.ones(2, GRID, dtype=torch.bool))


@pytest.mark.parametrize("size", [100, 128, 180])
def test_student_rejects_indivisible_sizes(size):
    with pytest.raises(ValueError, match="multiple of 120"):
        build_student(size)


def test_teacher_rejects_indivisible_size():
    with pytest.raises(ValueError, match="multiple"):
        build_teacher(50)


def test_parameter_counts():
    s, t = build_student(240, 1000), build_teacher(240, 14, 192, 1000)
    assert abs(n_params(s) - 6.9e6) / 6.9e6 < 0.03
    # teacher = student - branch-1 conv (3*16*16*192 + 192) + token embedding
    assert n_params(t) == n_params(s) - (3 * 256 * 192 + 192) + t.token_embed.proj.weight.numel() * 2 + 192 * 7
    assert [s_[0] for s_ in s.img_size_scaled] == [240, 224]
    assert t.pos_embed_1.shape == s.pos_embed_1.shape == (1, 197, 192)


def test_config_rebuilds(student, teacher):
    for m in (student, teacher):
        again = build_model(**m.config)
        assert type(again) is type(m) and again.config == m.config
        assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}


# --- losses -----------------------------------------------------------------------------------

def test_contrastive_zero_when_satisfied():
    e = torch.eye(4, 8)  # orthonormal: distinct rows sit sqrt(2) > margin apart
    a, b = e[[0, 1, 2, 2]], e[[0, 1, 3, 0]]
    y = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert contrastive_loss(a, b, y) == 0
    # positives apart, or a negative inside the margin, cost something
    assert contrastive_loss(a, b, torch.ones(4)) > 0
    assert contrastive_loss(a[:1], F.normalize(a[:1] + 0.05, dim=1), torch.zeros(1)) > 0


def test_contrastive_gradient_pulls_positives_pushes_negatives():
    torch.manual_seed(0)
    a = F.normalize(torch.randn(2, 8), dim=1).requires_grad_()
    b = F.normalize(a.detach() + 0.2 * torch.randn(2, 8), dim=1)
    y = torch.tensor([1.0, 0.0])
    d0 = (a - b).norm(dim=1).detach()
    assert d0[1] < 0.5  # the negative starts inside the margin
    contrastive_loss(a, b, y).backward()
    d1 = (a.detach() - 0.1 * a.grad - b).norm(dim=1)
    assert d1[0] < d0[0] and d1[1] > d0[1]


def test_contrastive_finite_gradient_at_zero_distance():
    a = F.normalize(torch.randn(2, 8), dim=1).requires_grad_()
    contrastive_loss(a, a.detach().clone(), torch.tensor([1.0, 0.0])).backward()
    assert torch.isfinite(a.grad).all()


def _kd_steps(student, teacher, steps, lr=0.05):
    s = student.clone().requires_grad_()
    opt = torch.optim.SGD([s], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        relaxed_contrastive_loss(s, teacher).backward()
        opt.step()
    return s.detach()


def _norm_dist(x):
    d = torch.cdist(x, x)
    return d / d[~torch.eye(len(x), dtype=torch.bool)].mean()


def test_relaxed_contrastive_pulls_teacher_neighbours():
    torch.manual_seed(0)
    t = torch.tensor([[0.0, 0.0], [0.01, 0.0], [5.0, 0.0], [0.0, 5.0]])  # 0,1 close (w~1), rest far (w~0)
    s = torch.randn(4, 6)
    after = _kd_steps(s, t, 1)
    assert _norm_dist(after)[0, 1] < _norm_dist(s)[0, 1]


def test_relaxed_contrastive_pushes_teacher_strangers_beyond_delta():
    t = torch.tensor([[0.0, 0.0], [0.01, 0.0], [5.0, 0.0]])  # 2 is far from both 0 and 1
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 0.1]])  # but the student puts 2 between them
    assert _norm_dist(s)[0, 2] < 1 and _norm_dist(s)[1, 2] < 1
    after = _norm_dist(_kd_steps(s, t, 200, lr=0.1))
    assert after[0, 2] > 1 and after[1, 2] > 1  # beyond delta = 1
    assert after[0, 1] < 0.2


def test_relaxed_contrastive_no_teacher_gradient():
    t = torch.randn(3, 4, requires_grad=True)
    relaxed_contrastive_loss(torch.randn(3, 5, requires_grad=True), t).backward()
    assert t.grad is None


def test_teacher_training_reduces_contrastive_loss(teacher):
    torch.manual_seed(0)
    images, tokens = teacher_batch(4, seed=1)
    valid = torch.rand(4, GRID * GRID) > 0.2
    i, j, y = torch.tensor([0, 1, 0]), torch.tensor([2, 3, 3]), torch.tensor([1.0, 0.6, 0.0])
    opt = torch.optim.AdamW(teacher.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        e = teacher(images, tokens, valid)
        loss = contrastive_loss(e[i], e[j], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_student_training_reduces_kd_loss(student):
    torch.manual_seed(0)
    images = torch.randn(4, 3, S_IMG, S_IMG)
    # two teacher neighbourhoods: images 0,1 and 2,3 (normalised distances are touchy at init: small lr)
    target = F.normalize(torch.randn(2, EMB), dim=1)[[0, 0, 1, 1]]
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    losses = []
    for _ in range(5):
        loss = relaxed_contrastive_loss(student(images), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# --- checkpoints ------------------------------------------------------------------------------

def test_load_init_safetensors_round_trip(tmp_path, student):
    from mmcrossvit.storage import write_safetensors
    import json
    path = tmp_path / "student.safetensors"
    write_safetensors(path, student.state_dict(), metadata={"config": json.dumps(student.config)})
    fresh = build_student(S_IMG, EMB)
    report = load_init(fresh, path)
    assert not report['missing'] and not report['unexpected']
    x = torch.randn(1, 3, S_IMG, S_IMG)
    torch.testing.assert_close(fresh.eval()(x), student.eval()(x))


def test_load_init_torch_dict_round_trip(tmp_path, teacher):
    path = tmp_path / "teacher.pth"
    torch.save({"model": {f"module.{k}": v for k, v in teacher.state_dict().items()},
                "config": teacher.config, "epoch": 3}, path)
    fresh = build_teacher(T_IMG, grid=GRID, token_dim=TOK, embed_dim=EMB)
    load_init(fresh, path)
    images, tokens = teacher_batch(1)
    torch.testing.assert_close(fresh.eval()(images, tokens), teacher.eval()(images, tokens))
    bare = tmp_path / "bare.pt"
    torch.save(teacher.state_dict(), bare)
    load_init(fresh, bare)


def test_load_init_mismatch_names_file(tmp_path, student):
    path = tmp_path / "other_embed.safetensors"
    from safetensors.torch import save_file
    save_file(build_student(S_IMG, EMB * 2).state_dict(), str(path))
    with pytest.raises(ValueError, match="other_embed.safetensors") as err:
        load_init(student, path)
    assert "head.0.weight" in str(err.value)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_init(student, junk)


def test_load_init_teacher_into_student(tmp_path, student):
    torch.manual_seed(1)
    t = build_teacher(S_IMG, grid=7, token_dim=TOK, embed_dim=EMB)
    path = tmp_path / "teacher.pth"
    torch.save({"model": t.state_dict()}, path)
    with pytest.raises(ValueError, match="teacher.pth"):
        load_init(student, path)  # strict: the architectures differ
    report = load_init(student, path, strict=False)
    sd = student.state_dict()
    torch.testing.assert_close(sd['patch_embed.0.proj.weight'], t.state_dict()['patch_embed.0.proj.weight'])
    torch.testing.assert_close(sd['blocks.0.blocks.0.0.attn.qkv.weight'], t.state_dict()['blocks.0.blocks.0.0.attn.qkv.weight'])
    assert not any(k.startswith('token_embed') for k in report['loaded'])
    assert 'patch_embed.1.proj.weight' in report['missing']


def test_load_pretrained_timm_offline(monkeypatch, student):
    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="internet") as err:
        load_pretrained_timm(student)
    assert "--init-from" in str(err.value)


def test_load_pretrained_timm_copies_weights(monkeypatch):
    real = timm.create_model
    torch.manual_seed(2)
    src = real('crossvit_tiny_240', pretrained=False)  # stands in for the ImageNet weights
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: src)
    t = build_teacher(T_IMG, grid=GRID, token_dim=TOK, embed_dim=1000)
    report = load_pretrained_timm(t)
    sd = t.state_dict()
    torch.testing.assert_close(sd['head.1.weight'], src.state_dict()['head.1.weight'])  # 1000 = ImageNet classes
    torch.testing.assert_close(sd['blocks.2.fusion.0.attn.wq.weight'], src.state_dict()['blocks.2.fusion.0.attn.wq.weight'])
    assert sd['pos_embed_1'].shape == (1, 1 + GRID * GRID, 192)  # resampled from 14 x 14
    assert 'pos_embed_0' in report['loaded'] and 'patch_embed.1.proj.weight' in report['skipped']
    s = build_student(S_IMG, EMB)
    report = load_pretrained_timm(s)
    assert 'head.0.weight' in report['skipped'] and 'patch_embed.1.proj.weight' in report['loaded']


def test_models_import_nothing_from_the_project():
    """models/ stays a plain model library: weight reading lives in mmcrossvit/train/weights.py."""
    import ast
    from pathlib import Path
    src = Path(__file__).resolve().parents[1] / "models" / "crossvit.py"
    mods = [n.module if isinstance(n, ast.ImportFrom) else a.name
            for n in ast.walk(ast.parse(src.read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))
            for a in n.names]
    assert not [m for m in mods if m and m.split(".")[0] in ("mmcrossvit", "models")]
