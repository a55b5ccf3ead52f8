"""The lite0 backbone: ImageNet weights mapped by position (shape-checked), the encoder student and
the hybrid teacher (small sizes: CPU-friendly)."""
from __future__ import annotations

import pytest
import torch

from mmcrossvit.errors import DataError
from mmcrossvit.train.weights import imagenet_lite0_file, load_imagenet_encoder, load_model, positional_state
from models.build import build_model, build_student, build_teacher
from models.encoder import lite0

torch.set_num_threads(2)


def test_imagenet_weights_map_by_position_onto_timm():
    model = build_student(64, 16, backbone='lite0', freeze=0)
    before = model.encoder.conv_stem.weight.clone()
    n = load_imagenet_encoder(model)
    src = torch.load(imagenet_lite0_file(), map_location='cpu', weights_only=True)
    # every tensor of the encoder came from the file, in order: stem first, head last
    assert n == sum(1 for k in model.encoder.state_dict() if not k.endswith('num_batches_tracked'))
    assert torch.equal(model.encoder.conv_stem.weight, src['_conv_stem.weight'])
    assert not torch.equal(model.encoder.conv_stem.weight, before)
    assert torch.equal(model.encoder.bn2.running_var, src['_bn1.running_var'])


def test_a_shape_mismatch_in_the_mapping_is_one_clear_error(tmp_path):
    src = torch.load(imagenet_lite0_file(), map_location='cpu', weights_only=True)
    keys = list(src)
    # two tensors swapped: same count, but the 4th is no longer where the model wants it
    src[keys[3]], src[keys[6]] = src[keys[6]], src[keys[3]]
    bad = tmp_path / "swapped.pth"
    torch.save(src, bad)
    model = build_student(64, 16, backbone='lite0')
    with pytest.raises(DataError, match=r"swapped\.pth.*tensor \d+ .* is \(.*\) but the model's .* not the same network"):
        load_imagenet_encoder(model, bad)
    short = dict(list(src.items())[:-10])
    with pytest.raises(DataError, match="tensors, the model"):
        positional_state(short, lite0().state_dict(), "x")


def test_an_untrained_student_ranks_like_the_encoders_gem_descriptor():
    torch.manual_seed(0)
    model = build_student(64, 1280, backbone='lite0').eval()
    load_imagenet_encoder(model)
    x = torch.randn(6, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        gem = torch.nn.functional.normalize(model.pool(model.encoder.forward_features(x)), dim=-1)
    # an orthogonal square head keeps every inner product
    torch.testing.assert_close(out @ out.T, gem @ gem.T, atol=1e-5, rtol=1e-4)


def test_freeze_keeps_early_stages_and_batch_norm_statistics():
    model = build_student(64, 16, backbone='lite0', freeze=4).train()
    frozen = [p for m in (model.encoder.conv_stem, *model.encoder.blocks[:4]) for p in m.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    assert all(p.requires_grad for p in model.encoder.blocks[4].parameters())
    bn = model.encoder.blocks[5][0].bn1
    stats = bn.running_mean.clone()
    model(torch.randn(4, 3, 64, 64)).sum().backward()
    assert not bn.training and torch.equal(bn.running_mean, stats)
    with pytest.raises(ValueError, match="freeze=9"):
        build_student(64, 16, backbone='lite0', freeze=9)


def test_hybrid_teacher_sees_tokens_and_rebuilds(tmp_path):
    torch.manual_seed(0)
    t = build_teacher(32, grid=3, token_dim=8, embed_dim=16, backbone='lite0').eval()
    img, tok = torch.randn(2, 3, 32, 32), torch.randn(2, 10, 8)
    with torch.no_grad():
        a, b = t(img, tok), t(img, tok + 1)
    assert a.shape == (2, 16) and not torch.allclose(a, b)  # the spatial branch matters
    assert t.pos_embed_0.shape[1] == 1 + (32 // 16) ** 2     # stride-16 tokens
    rebuilt = build_model(**t.config)
    assert rebuilt.config == t.config and type(rebuilt) is type(t)
    path = tmp_path / "t.pt"
    torch.save({'model': t.state_dict(), 'config': t.config}, path)
    with torch.no_grad():
        torch.testing.assert_close(load_model(path)(img, tok), a)
    with pytest.raises(ValueError, match="multiple of 16"):
        build_teacher(40, grid=3, token_dim=8, embed_dim=16, backbone='lite0')
    with pytest.raises(ValueError, match="unknown backbone"):
        build_student(64, 16, backbone='resnet')


def test_the_lite0_chain_trains_distils_resumes_and_retrieves(tmp_path):
    """Teacher and student on the lite0 backbone through the step scripts, as the demo preset runs
    them: frozen stages keep ImageNet's weights, the student resumes exactly, and the pairs step's
    loader rebuilds it."""
    from tests.test_training import assert_same_tensors, make_run, state_of, student_main, teacher_main
    r = make_run(tmp_path)
    common = r["args"] + ["--preset", "tiny", "--threads", "1", "--backbone", "lite0", "--val-every", "0"]
    t = teacher_main(common + ["--img-size", "32", "--epochs", "1"])
    assert t["finished"]
    tck = state_of(r["paths"].teacher_checkpoint)
    assert tck["config"]["backbone"] == "lite0" and tck["config"]["img_size"] == 32
    src = torch.load(imagenet_lite0_file(), map_location='cpu', weights_only=True)
    # frozen stages keep their ImageNet weights through training
    assert torch.equal(tck["model"]["encoder.conv_stem.weight"], src['_conv_stem.weight'])
    sargs = common + ["--img-size", "64", "--freeze", "5"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    student_main(sargs + ["--out", str(full)])
    student_main(sargs + ["--out", str(cut), "--stop-after", "1"])
    student_main(sargs + ["--out", str(cut), "--resume"])
    a, b = state_of(full / "last.pt"), state_of(cut / "last.pt")
    assert_same_tensors(a["model"], b["model"])
    assert a["config"] == {'arch': 'student', 'backbone': 'lite0', 'img_size': 64, 'embed_dim': 32, 'freeze': 5}
    # stages 0-4 keep ImageNet's weights, the trained ones moved away from them
    src_keys = [k for k in src if not k.endswith('num_batches_tracked') and not k.startswith('_fc.')]
    own_keys = [k for k in a["model"] if k.startswith('encoder.') and not k.endswith('num_batches_tracked')]
    imagenet = dict(zip(own_keys, (src[k] for k in src_keys)))
    assert torch.equal(a["model"]["encoder.blocks.4.0.conv_pw.weight"], imagenet["encoder.blocks.4.0.conv_pw.weight"])
    assert not torch.equal(a["model"]["encoder.blocks.6.0.conv_pw.weight"], imagenet["encoder.blocks.6.0.conv_pw.weight"])
    # what the pairs step loads: an image-only model, rebuilt from its config, the same outputs
    model = load_model(full / "best.pt", arch="student")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = build_model(**a["config"]).eval()
        ref.load_state_dict(a["model"])
        torch.testing.assert_close(model(x), ref(x))
