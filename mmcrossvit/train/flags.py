"""The command-line flags both trainers take (the step modules add their own).

A flag whose value comes from the preset table (mmcrossvit/presets.py) defaults to SUPPRESS,
so only an explicit flag overrides the preset; the others have real defaults.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from models.build import BACKBONES

S = argparse.SUPPRESS


def add_training_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training run")
    g.add_argument("--out", type=Path, default=None, help="checkpoint / log folder (default: outputs/<name>/<kind>)")
    g.add_argument("--resume", action="store_true", help="continue from <out>/last.pt (starts fresh if there is none)")
    g.add_argument("--overwrite", action="store_true", help="start over, deleting <out>'s checkpoints and logs")
    g.add_argument("--stop-after", type=int, default=None,
                   help="stop (with a checkpoint) after this many epochs in this invocation; --resume continues")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when available")
    g.add_argument("--threads", type=int, default=S,
                   help="torch CPU threads. The float results depend on it, so it is a preset value, not "
                        "'all cores' (paper/tiny 1; demo 2: 1.6x faster on an idle 2-core CPU, slower on a busy one)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0: load in the main process)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="mixed precision on CUDA (bf16, or fp16 with loss scaling); ignored on CPU")
    g = p.add_argument_group("model")
    g.add_argument("--backbone", choices=BACKBONES, default=S,
                   help="crossvit: CrossViT-tiny from scratch (the paper's shape); lite0: an ImageNet EfficientNet-Lite0 "
                        "encoder (installed with requirements.txt) under GeM (student) or as the teacher's image branch")
    g.add_argument("--freeze", type=int, default=S,
                   help="lite0: how many of the encoder's 7 stages (with its stem) keep their ImageNet weights")
    g.add_argument("--img-size", type=int, default=S, help="square input size in pixels")
    g.add_argument("--embed-dim", type=int, default=S, help="descriptor size")
    g.add_argument("--init", "--init-from", dest="init_from", type=Path, default=None,
                   help="initialise from a local state dict: a .safetensors file or a weights_only torch checkpoint, "
                        "e.g. timm's crossvit_tiny_240 saved on a machine with internet, or a trained student / "
                        "teacher (tensors matching by name and shape; position embeddings resampled)")
    g.add_argument("--pretrained", action="store_true",
                   help="initialise from timm's ImageNet crossvit_tiny_240 weights (needs internet or an HF cache)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=S, help="training epochs")
    g.add_argument("--batch-size", type=int, default=S, help="global batch size, split over processes")
    g.add_argument("--optimizer", choices=["sgd", "adamw"], default=S, help="optimiser")
    g.add_argument("--lr", type=float, default=S, help="peak learning rate")
    g.add_argument("--momentum", type=float, default=S, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=S, help="decoupled weight decay (not on norms, biases, tokens)")
    g.add_argument("--schedule", choices=["constant", "cosine"], default=S, help="learning-rate schedule after warm-up")
    g.add_argument("--warmup-epochs", type=float, default=S, help="linear warm-up length in epochs")
    g.add_argument("--min-lr-ratio", type=float, default=S, help="cosine floor as a fraction of --lr")
    g.add_argument("--grad-clip", type=float, default=S, help="clip the gradient norm to this (0: off)")
    g = p.add_argument_group("augmentation")
    g.add_argument("--night-prob", type=float, default=S,
                   help="probability that an image is made night (its _cyclegan file if any, else simulated)")
    g.add_argument("--cyclegan", action=argparse.BooleanOptionalAction, default=S,
                   help="use the database images' <name>_cyclegan night renderings where they exist "
                        "(--no-cyclegan: always the photometric night simulation)")
    g.add_argument("--hflip", type=float, default=S, help="horizontal flip probability (tokens flipped too)")
    g.add_argument("--jitter", type=float, default=S, help="colour-jitter strength (photometric only; 0: off)")
    g.add_argument("--crop-scale", type=float, default=S,
                   help="smallest area fraction of a random crop, aspect 3:4..4:3 (1: no crop; image-only models)")
    g.add_argument("--portrait-prob", type=float, default=S,
                   help="probability of a portrait view (a 3:4 window of the landscape image; image-only models)")
    g.add_argument("--roll", type=float, default=S, help="largest random in-plane rotation in degrees (image-only models)")
    g = p.add_argument_group("validation")
    g.add_argument("--val-fold", type=int, default=S,
                   help="fold of the spatial DB held out as validation anchors (-1: none held out, validate on all)")
    g.add_argument("--val-every", type=int, default=S, help="validate every N epochs (0: only at the end)")
    g.add_argument("--eval-batch-size", type=int, default=S, help="batch size when embedding the database")
