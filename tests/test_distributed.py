"""Two torchrun processes (CPU, gloo) against one process on the same global batch.

`--batch-size` is the global batch: each step rank r takes rows r, r + W, ... of it and DDP
averages the gradients (mmcrossvit/train/distributed.py). Rank 0's initial weights are broadcast
by DDP, and with the tiny preset nothing in the forward pass is random (no dropout, drop-path 0),
so a loss that is a mean over rows gives the two processes the single process's gradient, up to
the order of the floating-point sums. Both runs use --threads 1 (the thread count changes the
float results) and the same seed, data plan and augmentations (derived per row, not per rank).

On the toy spatial DB of tests/test_training.py: 16 training anchors, so with --batch-size 8 the
teacher takes 2 steps per epoch and the student (4 pairs per step) 4.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_training import FAST, REPO, make_run, state_of, student_main, teacher_main

STUDENT = ["--preset", "tiny", "--threads", "1", "--eval-batch-size", "32", "--epochs", "1"]  # 4 steps


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def one_process_teacher(run, tmp_path_factory):
    """The tiny teacher trained in this process (2 epochs, 4 steps): the reference of the teacher
    test and the teacher that both student runs distil from."""
    out = tmp_path_factory.mktemp("teacher") / "one"
    teacher_main(run["args"] + FAST + ["--out", str(out)])
    return out


def torchrun(script: str, args: list, out: Path) -> str:
    """Run `script` on 2 CPU processes (a free port: --standalone); its stdout. Each rank prints the
    sha256 of its final weights: they must be bit-identical (the replicas never drift apart)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / script), *args, "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sums = dict(re.findall(r"rank (\d): weights sha256 ([0-9a-f]{64})", r.stdout))
    assert sums.keys() == {"0", "1"} and sums["0"] == sums["1"]
    return r.stdout


def logged_losses(folder: Path) -> list[float]:
    """The per-step training loss of a run, as logged to TensorBoard (rank 0)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.value for e in acc.Scalars("train/loss")]


def weight_difference(a: dict, b: dict) -> tuple[float, float]:
    """(max, mean) |a - b| over every element of two state dicts with the same tensors."""
    assert a.keys() == b.keys()
    diffs = torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in a])
    return diffs.max().item(), diffs.mean().item()


def test_torchrun_teacher_matches_one_process(run, one_process_teacher, tmp_path):
    """The teacher's contrastive loss is a mean over pairs, so two processes take the single
    process's steps; only the order of the sums differs (each rank's mean, then DDP's average).

    Measured on a 2-core CPU after 4 AdamW steps (lr 1e-3, so a weight moves up to ~4e-3):
    mean |dw| 1.0e-8, max |dw| 1.8e-5 (2 of 6.5 M weights above 1e-5: Adam divides by sqrt(v),
    which magnifies the rounding of near-zero gradients); logged losses agree to 5e-7 (step 1)
    and 1.0e-5 (step 4) relative; the mined-negative embeddings (refreshed after epoch 1,
    computed split over the ranks) to 3.2e-6.
    With another global batch in the two-process run (--batch-size 4: 8 steps) mean |dw| is
    1.9e-3, max 7.1e-3: the bounds below sit orders of magnitude from both."""
    ddp = tmp_path / "ddp"
    torchrun("train_multimodal_crossvit_teacher.py", run["args"] + FAST, ddp)
    one, two = state_of(one_process_teacher / "last.pt"), state_of(ddp / "last.pt")
    assert len(two["rng"]) == 2 and two["args"]["batch_size"] == one["args"]["batch_size"] == 8
    assert two["step"] == one["step"] == 4
    worst, mean = weight_difference(one["model"], two["model"])
    assert mean < 1e-6 and worst < 2e-4, (mean, worst)
    assert torch.allclose(one["extra"]["mined"], two["extra"]["mined"], rtol=0, atol=1e-4)
    # the logged loss is the global batch's (averaged over the ranks), step by step
    l1, l2 = logged_losses(one_process_teacher), logged_losses(ddp)
    assert len(l1) == len(l2) == 4
    assert l1 == pytest.approx(l2, rel=1e-4)
    assert json.loads((ddp / "summary.json").read_text())["processes"] == 2


def test_torchrun_student_matches_one_process(run, one_process_teacher, tmp_path):
    """The student's relaxed contrastive loss couples every pair of the batch, so each rank gathers
    all ranks' embeddings and targets (train.distributed.gather_rows, gradients included) and
    computes the global batch's loss; DDP's average of the ranks' gradients is then the single
    process's gradient.

    Measured on a 2-core CPU after 4 AdamW steps (global batch 8 = 4 pairs, 2 per rank): mean
    |dw| 4.6e-9, max 4.3e-5, logged losses equal to 1e-6 relative. Without the gather (the loss
    within each rank's share): mean |dw| 6.1e-4, max 2.6e-3, and the first logged loss 0.6707
    against 0.6097 (the mean of two half-batch losses): the bounds below fail then."""
    args = run["args"] + STUDENT + ["--teacher", str(one_process_teacher / "best.pt")]
    one, ddp = tmp_path / "one", tmp_path / "ddp"
    student_main(args + ["--out", str(one)])
    torchrun("train_knowledge_distillation_student.py", args, ddp)
    A, B = state_of(one / "last.pt"), state_of(ddp / "last.pt")
    assert len(B["rng"]) == 2 and A["args"]["batch_size"] == B["args"]["batch_size"] == 8
    assert A["step"] == B["step"] == 4
    assert A["extra"]["teacher_sha256"] == B["extra"]["teacher_sha256"]
    k1, k2 = ({k: v for k, v in json.loads((f / "summary.json").read_text())["kernel"].items()
               if isinstance(v, float)} for f in (one, ddp))
    assert len(k1) >= 5 and k1 == pytest.approx(k2, rel=1e-6)
    worst, mean = weight_difference(A["model"], B["model"])
    assert mean < 1e-6 and worst < 2e-4, (mean, worst)
    l1, l2 = logged_losses(one), logged_losses(ddp)
    assert len(l1) == len(l2) == 4
    assert l1 == pytest.approx(l2, rel=1e-4)
