"""What a finished cost-curve step's own files say: parts of its time (log timestamps, the trainers'
summary.json), counts (features per image, SfM points) for benchmarks/cost_curve.py's rows."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from cost_curve_fit import TRAINERS



def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _log_times(log: Path, marks: dict[str, str]) -> dict[str, float]:
    """Seconds since the epoch of the first logging line (asctime) containing each mark."""
    from datetime import datetime
    found = {}
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return found
    for line in lines:
        if len(line) < 23 or line[4] != "-" or line[19] != ",":
            continue
        try:
            t = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        for key, mark in marks.items():
            if key not in found and mark in line:
                found[key] = t
    return found


def step_details(step: str, sr, row: dict, log: Path) -> dict:
    """Parts of a step's time (from its logs and summaries) and what it produced."""
    d: dict = {}
    if step == "preprocess":
        t = _log_times(log, {"start": "preprocessing INFO dataset ", "features": "preprocessing INFO features: ",
                             "pairs": " database pairs -> ", "sfm": "preprocessing INFO SfM: ",
                             "spatial_db": "preprocessing INFO spatial database: "})
        order = ["start", "features", "pairs", "sfm", "spatial_db"]
        if all(k in t for k in order):
            d["parts"] = {"SIFT features": t["features"] - t["start"], "pairs from poses": t["pairs"] - t["features"],
                          "matching + triangulation": t["sfm"] - t["pairs"],
                          "spatial database": t["spatial_db"] - t["sfm"]}
        s = read_json(sr.out / "sfm_summary.json") or {}
        st = read_json(sr.database / "stats.json") or {}
        d["sfm"] = {k: s.get(k) for k in ("registered_images", "points", "observations", "mean_track_length")}
        d["sfm"]["pairs"] = (s.get("matching") or {}).get("pairs") if isinstance(s.get("matching"), dict) else None
        ppa = st.get("positives_per_anchor")
        d["positives_per_anchor"] = ppa.get("mean") if isinstance(ppa, dict) else None
        d["features_per_image"] = _features_per_image(sr.out / "features.h5")
    elif step in TRAINERS:
        s = read_json(sr.out / step / "summary.json")
        if s:
            fit_wall, train, steps = s.get("wall_seconds"), s.get("train_seconds"), s.get("steps")
            d["steps"], d["epochs_done"], d["epochs"] = steps, s.get("epochs_done"), s.get("epochs")
            if fit_wall is not None and train is not None:
                d["parts"] = {"set-up": row["seconds"] - fit_wall, "training": train,
                              "validation + checkpoint": fit_wall - train}
                if steps:
                    d["seconds_per_step"] = train / steps
        if step == "student":
            import re
            m = re.search(r"embeddings in ([0-9.]+) s", log.read_text(errors="replace")) if log.exists() else None
            if m:
                d["teacher_embeddings_s"] = float(m.group(1))
    elif step == "localize":
        s = read_json(sr.out / "localization_summary.json") or {}
        d["queries"], d["localized"] = s.get("queries"), s.get("localized")
        per = []
        try:
            for line in (sr.out / "localization_log.jsonl").read_text().splitlines():
                r = json.loads(line)
                tt = r.get("time") or r.get("times") or {}
                if isinstance(tt, dict) and "total" in tt:
                    per.append(float(tt["total"]))
                elif isinstance(tt, (int, float)):
                    per.append(float(tt))
        except (OSError, ValueError):
            pass
        if per:
            d["seconds_per_query_median"] = float(np.median(per))
    return d


def _features_per_image(path: Path):
    try:
        import h5py
        counts = []
        with h5py.File(path, "r") as f:
            def visit(name, obj):
                if isinstance(obj, h5py.Dataset) and name.endswith("keypoints"):
                    counts.append(obj.shape[0])
            f.visititems(visit)
        return round(float(np.mean(counts)), 1) if counts else None
    except Exception:  # noqa: BLE001 (an optional detail; the format belongs to mmcrossvit.features)
        return None


# ---------------------------------------------------------------------------------------------
# running
