"""One preset table and one run layout: every step's flags and the table agree, and a step run by
hand with --preset P resolves exactly what run_pipeline.py runs with P."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmcrossvit import cli, presets
from mmcrossvit.paths import RunLayout

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {"preprocess": "preprocessing.py", "tokens": "generate_RoPE_embeddings.py",
           "teacher": "train_multimodal_crossvit_teacher.py", "student": "train_knowledge_distillation_student.py",
           "pairs": "generate_localization_pairs.py", "localize": "localize.py", "evaluate": "evaluate.py"}


def modules():
    from mmcrossvit.steps import evaluate, localize, pairs, preprocess, student, teacher, tokens
    return {m.STEP: m for m in (preprocess, tokens, teacher, student, pairs, localize, evaluate)}


def preset_flags(module) -> set[str]:
    """dests of the step's flags whose default comes from the preset (argparse.SUPPRESS)."""
    p = cli.parser(module)
    return {a.dest for a in p._actions if a.default is argparse.SUPPRESS and a.dest != "help"}


@pytest.mark.parametrize("step", list(SCRIPTS))
def test_every_preset_value_has_a_flag_and_every_preset_flag_a_value(step):
    module = modules()[step]
    for preset in presets.PRESETS:
        keys = set(presets.step_settings(preset, step))
        flags = preset_flags(module)
        # common keys a step does not use need no flag of its own (val_fold outside training/eval)
        unused_common = set(presets.PRESETS[preset]["common"]) - flags
        assert keys - unused_common == flags, (preset, keys ^ flags)


@pytest.mark.parametrize("step", list(SCRIPTS))
@pytest.mark.parametrize("preset", list(presets.PRESETS))
def test_script_with_preset_resolves_what_the_pipeline_runs(step, preset, tmp_path):
    module = modules()[step]
    run, cfg = cli.parse(module, ["--dataset", str(tmp_path), "--preset", preset])
    assert cfg == cli.settings(module, preset)
    assert run == RunLayout.create(tmp_path)


def test_an_explicit_flag_overrides_the_preset(tmp_path):
    from mmcrossvit.steps import preprocess
    _, cfg = cli.parse(preprocess, ["--dataset", str(tmp_path), "--preset", "demo", "--first-octave", "-1"])
    assert cfg.first_octave == -1 and cfg.peak_threshold == presets.PRESETS["demo"]["preprocess"]["peak_threshold"]


@pytest.mark.parametrize("preset", ["demo", "tiny"])
def test_run_pipeline_runs_every_step_with_its_presets_values(preset, tmp_path, monkeypatch):
    """Every value in the preset table reaches the step as run_pipeline.py runs it (the demo's
    token grid once came from a --grid flag run_pipeline.py passed, not from the table)."""
    import run_pipeline
    from mmcrossvit import steps
    ran = {}
    monkeypatch.setattr(steps, "execute", lambda module, run, cfg: ran.setdefault(module.STEP, vars(cfg)))
    (tmp_path / "ground_truth").mkdir()
    (tmp_path / "ground_truth" / "query_poses.txt").write_text("")
    run_pipeline._run_steps(run_pipeline.parse_args(["--dataset", str(tmp_path), "--preset", preset]),
                            RunLayout.create(tmp_path, outputs=tmp_path / "o", database_root=tmp_path / "d"), 0)
    assert set(ran) == {"preprocess", "tokens", "teacher", "student", "pairs", "localize", "evaluate"}
    for step, cfg in ran.items():
        table = presets.step_settings(preset, step)
        assert {k: cfg[k] for k in table} == table, step


def test_one_definition_of_paths_and_run_names():
    """No script or module outside the layout derives a run name or an outputs root."""
    files = [p for p in REPO.rglob("*.py") if ".venv" not in p.parts and "tests" not in p.parts
             and p != REPO / "mmcrossvit/paths.py"]
    offenders = []
    for p in files:
        text = p.read_text()
        if re.search(r'Path\("(outputs|DataBase)"\)|\.resolve\(\)\.name|run_paths', text):
            offenders.append(str(p.relative_to(REPO)))
    # layout.Dataset.name is the dataset's own folder name, and the converters (datasets/cambridge.py,
    # datasets/strecha.py, their shared datasets/converted.py) name the scene after its download
    # folder: none is a run name
    converters = {"datasets/cambridge.py", "datasets/strecha.py", "datasets/converted.py", "datasets/photos.py"}
    assert set(offenders) <= {"mmcrossvit/layout.py"} | converters, offenders


@pytest.mark.parametrize("script", sorted(set(SCRIPTS.values()) | {"run_pipeline.py", "localize_hloc.py"}))
def test_every_script_has_help(script):
    r = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "--dataset" in r.stdout and "--preset" in r.stdout
