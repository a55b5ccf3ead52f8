"""The cost curve's analysis: power-law fits of each step's time and memory against the database
size, and their extrapolation to Aachen and to a 100k-image city (benchmarks/cost_curve_report.py
writes them up; benchmarks/cost_curve.py measures).
"""
from __future__ import annotations

import math

import numpy as np
from measure_process import MB

STEPS = ("generate", "preprocess", "tokens", "teacher", "student", "pairs", "localize", "evaluate")
SCRIPTS = {"preprocess": "preprocessing.py", "tokens": "generate_RoPE_embeddings.py",
           "teacher": "train_multimodal_crossvit_teacher.py", "student": "train_knowledge_distillation_student.py",
           "pairs": "generate_localization_pairs.py", "localize": "localize.py", "evaluate": "evaluate.py"}
TRAINERS = ("teacher", "student")
AACHEN = {"name": "Aachen Day-Night", "db": 4328, "queries": 922, "night": 98, "width": 1600, "height": 1200}
CITY = {"name": "100k-image city", "db": 100_000}
MEMORY_LIMIT_MB = 8192
WORSE_THAN_LINEAR = 1.3

# Where a step's time or memory grows faster than the number of images, from reading the code
# (not measured here unless the exponent shows it): what, where, and its bytes / operations per n.
# preprocess's pairs_from_poses left this list when a k-d tree replaced its dense n x n matrix
# (61 n^2 bytes; benchmarks/results/scale_pairs.md)
SUPERLINEAR = [
    ("teacher", "mmcrossvit/train/validation.py retrieval",
     "torch.cdist of the held-out fold (n/5) against all n images, clean and night: O(n^2) time, "
     "0.2 n^2 float32 per call (not chunked); train/negatives.py sample_negatives also makes a dense "
     "1024 x n mask / weights per chunk of anchors every epoch (O(n^2) time, O(n) memory)",
     lambda n: 0.2 * n * n * 4.0),
    ("student", "mmcrossvit/train/validation.py retrieval; steps/student.py distance_samples",
     "the same validation cdist (0.2 n^2 float32), plus a dense length-n negative mask per training "
     "anchor in distance_samples (O(n^2) time, O(n) memory)",
     lambda n: 0.2 * n * n * 4.0),
    ("pairs", "mmcrossvit/steps/pairs.py main (retrieval.topk of the database against itself)",
     "database-to-database ranking for the retrieval tables: n x n inner products of 1000-D descriptors "
     "(O(n^2 d) time; the pairs the pipeline uses need only the queries' ranking), memory one chunk of "
     "rows against all n at a time (4096 x n float32)",
     lambda n: 4096.0 * n * 4.0),
    ("evaluate", "mmcrossvit/evaluation.py gt_covisibility",
     "for every query, a projection of all 3D points (visible_points' z-buffer): O(queries x points) = "
     "O(n^2) time with queries in proportion to n; the counting per database image is O(points seen x "
     "track length) since observations are grouped by point (it was O(queries x observations))",
     lambda n: 0.0),
]


# ---------------------------------------------------------------------------------------------
# command line

def fit_power(ns, ys) -> dict | None:
    """Least squares of log y = log a + b log n over the points with y > 0."""
    pts = [(float(n), float(y)) for n, y in zip(ns, ys) if y is not None and y > 0]
    if len({n for n, _ in pts}) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    b, loga = np.polyfit(x, y, 1)
    pred = loga + b * x
    ss = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - float(((y - pred) ** 2).sum()) / ss if ss > 0 else 1.0
    return {"a": float(math.exp(loga)), "b": float(b), "r2": r2, "points": [[n, y] for n, y in pts]}


def growth(b: float | None) -> str:
    if b is None:
        return "-"
    if b <= 1.15:
        return "linear or better"
    if b <= WORSE_THAN_LINEAR:
        return "~ n log n"
    if b < 1.75:
        return "worse than linear"
    return "~ quadratic or worse"


def curve(ns: list[int], values: list[float], base: float, small_limit: float) -> dict:
    """A measured series against n: the power fit of (value - base), the exponent between the two
    largest sizes, and whether the largest size is too little above `base` to tell any growth."""
    y = [v - base for v in values]
    c = {"values": {str(n): v for n, v in zip(ns, values)}, "base": base, "fit": fit_power(ns, y),
         "b_last": None, "small": y[-1] < small_limit}
    if len(ns) >= 2 and y[-1] > 0 and y[-2] > 0:
        c["b_last"] = math.log(y[-1] / y[-2]) / math.log(ns[-1] / ns[-2])
    bs = [b for b in ((c["fit"] or {}).get("b"), c["b_last"]) if b is not None]
    c["b_ext"] = max(0.0, *bs) if bs else None  # a cost does not shrink as n grows: below 0 is noise
    return c


def grows_worse(c: dict | None) -> bool:
    return bool(c) and not c["small"] and c["fit"] is not None and c["b_ext"] is not None \
        and min(c["fit"]["b"], c["b_last"] if c["b_last"] is not None else c["fit"]["b"]) > WORSE_THAN_LINEAR


def extend_time(c: dict | None, N: float) -> float | None:
    """Time at N: base + (value - base at the largest size) x (N / n)^b, with b the larger of the
    fitted exponent and the one between the two largest sizes (a constant hidden in small sizes
    makes the fit too flat); linear where the largest size is too little above base to tell."""
    if not c:
        return None
    n_l = max(int(k) for k in c["values"])
    y = c["values"][str(n_l)] - c["base"]
    if y <= 0:
        return c["values"][str(n_l)]
    b = 1.0 if c["small"] or c["b_ext"] is None else c["b_ext"]
    return c["base"] + y * (N / n_l) ** b


def memory_slope(c: dict) -> float | None:
    """MB per database image: least squares of memory = m + slope n over every size (not below 0)."""
    ns = sorted(int(k) for k in c["values"])
    if len(ns) < 2:
        return None
    return max(0.0, float(np.polyfit(ns, [c["values"][str(n)] for n in ns], 1)[0]))


def extend_memory(c: dict | None, N: float) -> float | None:
    """Memory at N: the largest size's, plus the fitted MB per image times the images added; the
    power law as for time where memory itself grows faster than linearly, whichever is larger."""
    if not c:
        return None
    ns = sorted(int(k) for k in c["values"])
    v = [c["values"][str(n)] for n in ns]
    if len(ns) < 2:
        return v[-1]
    out = v[-1] + memory_slope(c) * (N - ns[-1])
    if grows_worse(c):
        out = max(out, c["base"] + (v[-1] - c["base"]) * (N / ns[-1]) ** c["b_ext"])
    return out


def analyse(state: dict, args) -> dict:
    sizes = sorted(n for n in set(args.sizes) if state["sizes"].get(str(n), {}).get("steps"))
    rows = {n: state["sizes"][str(n)]["steps"] for n in sizes}
    start = state.get("startup", {})
    fits: dict = {}
    for step in STEPS:
        have = [n for n in sizes if step in rows[n]]
        if not have:
            continue
        t0, m0 = start.get(step, {}).get("seconds", 0.0), start.get(step, {}).get("peak_mb", 0.0)
        f = {"sizes": have, "t0": t0, "m0": m0,
             # too little above start-up to say anything about growth: under 1 s (or a quarter of
             # the start-up) / under 20 MB at the largest size
             "time": curve(have, [rows[n][step]["seconds"] for n in have], t0, max(1.0, 0.25 * t0)),
             "memory": curve(have, [rows[n][step]["peak_mb"] for n in have], m0, 20.0),
             "disk": curve(have, [rows[n][step]["disk_added_mb"] for n in have], 0.0, 1.0), "parts": {}}
        parts = {}
        for n in have:
            for k, v in (rows[n][step].get("parts") or {}).items():
                parts.setdefault(k, {})[n] = v
        for k, v in parts.items():
            ns = sorted(v)
            f["parts"][k] = curve(ns, [v[n] for n in ns], 0.0, 1.0)
        fits[step] = f
    return {"sizes": sizes, "fits": fits}


def pixel_ratio(cfg: dict, preset: str) -> dict:
    """Pixels SIFT sees per Aachen image over ours, under the preset's max_image_size."""
    from mmcrossvit.presets import step_settings
    cap = step_settings(preset, "preprocess")["max_image_size"]

    def eff(w, h):
        s = min(1.0, cap / max(w, h))
        return w * s * h * s
    return {"cap": cap, "ours": eff(cfg["width"], cfg["height"]), "aachen": eff(AACHEN["width"], AACHEN["height"]),
            "ratio": eff(AACHEN["width"], AACHEN["height"]) / eff(cfg["width"], cfg["height"])}


def training_budget(step: str, preset: str) -> dict:
    """The preset's full training: epochs, validations and (teacher) hard-negative refreshes."""
    from mmcrossvit.presets import step_settings
    s = step_settings(preset, step)
    E, ve = int(s["epochs"]), int(s.get("val_every") or 0)
    vals = {e for e in range(1, E + 1) if (ve and e % ve == 0) or e == E}
    refresh = 0
    if step == "teacher" and s.get("negatives") != "uniform" and s.get("refresh_every"):
        refresh = sum(1 for e in range(1, E) if e % int(s["refresh_every"]) == 0 and e not in vals)
    return {"epochs": E, "validations": len(vals), "refreshes": refresh}


def extrapolate(analysis: dict, state: dict, args) -> dict:
    fits, sizes = analysis["fits"], analysis["sizes"]
    largest = sizes[-1]
    cfg = state["sizes"][str(largest)]["config"]
    px = pixel_ratio(cfg, cfg["preset"])
    # localization is per query: at Aachen's ratio of queries to database images
    q_ratio = (AACHEN["queries"] / AACHEN["db"]) / args.queries_per_db
    targets = {"aachen": AACHEN["db"], "city": CITY["db"]}
    out = {"pixel_ratio": px, "query_ratio_scale": q_ratio, "steps": {}}
    for step, f in fits.items():
        e = {}
        for tname, N in targets.items():
            t = extend_time(f["time"], N)
            note = []
            if t is not None and step == "preprocess" and tname == "aachen" and "SIFT features" in f["parts"]:
                sift = extend_time(f["parts"]["SIFT features"], N)
                if sift is not None:
                    t += sift * (px["ratio"] - 1)
                    note.append(f"SIFT part x{px['ratio']:.2f} (pixels)")
            if t is not None and step == "localize" and abs(q_ratio - 1) > 1e-3:
                t = f["t0"] + (t - f["t0"]) * q_ratio
                note.append(f"x{q_ratio:.2f} for Aachen's queries per image")
            e[tname] = {"seconds": t, "peak_mb": extend_memory(f["memory"], N), "note": "; ".join(note)}
            if step in TRAINERS and "training" in f["parts"]:
                b = training_budget(step, cfg["preset"])
                setup = extend_time(f["parts"].get("set-up"), N)
                train = extend_time(f["parts"]["training"], N)
                val = extend_time(f["parts"].get("validation + checkpoint"), N)
                if None not in (setup, train, val):
                    per_epoch = train / cfg["train_epochs"]
                    e[tname]["budget_seconds"] = setup + b["epochs"] * per_epoch + \
                        (b["validations"] + b["refreshes"]) * val
                    e[tname]["budget"] = b
        out["steps"][step] = e
    return out


