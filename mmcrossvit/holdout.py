"""The map's self-check for a run without query ground truth: database images localized as if
they were queries, and compared with their own poses in the map.

Every k-th database image of the map (evenly spread by name, `num_images` at most) is localized
with the run's localization settings against its retrieval neighbours (the pairs step's
pairs-db-retrieval.txt, itself left out) or, for a run without retrieval, against every other
database image. Its own image is never a candidate, so its pose comes from the other images'
matches; but the map's points were triangulated with its observations too, so the errors are
optimistic: a check that the map, the retrieval and the solver work, not a benchmark figure.
(A map made by datasets/photos.py holds photos out of the SfM itself, and needs none of this.)
"""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from .colmap_io import read_pairs
from .evaluation import localization_table, pose_error
from .features import FeatureStore
from .localization import LocalizeOptions, SfMModel, localize_query

LABEL = "database images, left out one at a time"


def pick(names: list[str], num_images: int) -> list[str]:
    """Evenly spread by name: every k-th, at most num_images."""
    names = sorted(names)
    if num_images <= 0 or not names:
        return []
    step = max(1, len(names) // num_images)
    return names[::step][:num_images]


def candidates(model: SfMModel, picked: list[str], db_pairs: Path | None, k: int) -> dict[str, list[str]]:
    in_map = set(model.point3d_ids)
    if db_pairs is not None and db_pairs.exists():
        out: dict[str, list[str]] = {n: [] for n in picked}
        for a, b in read_pairs(db_pairs):
            if a in out and b != a and b in in_map:
                out[a].append(b)
        return {n: c[:k] for n, c in out.items()}
    return {n: sorted(in_map - {n}) for n in picked}


def check(model: SfMModel, features: Path, settings: dict, num_images: int, db_pairs: Path | None = None,
          k: int = 20, progress: bool = True) -> tuple[dict, list[dict]]:
    """(localization table, one row per image) of the hold-out check; `settings`: the run's
    localization settings (re-ranking off: the candidates are already the retrieval's best)."""
    opts = LocalizeOptions.of(settings, rerank_keep=None, rerank_pnp=0, rerank_points=False)
    picked = pick([n for n in model.point3d_ids if n in model.poses], num_images)
    cands = candidates(model, picked, db_pairs, k)
    store = FeatureStore(features)
    est, rows = {}, []
    for n in tqdm(picked, desc="hold-out check", unit="img", disable=not progress):
        r = localize_query(n, model.cameras[n], cands[n], model, store, opts)
        est[n] = r.pose if r.success else (r.estimate or r.pose)
        rows.append({"image": n, "success": r.success, "inliers": r.num_inliers, "candidates": len(cands[n])})
    truth = {n: model.poses[n] for n in picked}
    table = localization_table(est, truth, {n: "database" for n in picked}) if picked else {}
    for row in rows:
        e = pose_error(est[row["image"]], truth[row["image"]])
        row.update(error_m=float(e[0]), error_deg=float(e[1]))
    return table, rows


def wrong_localized(rows: list[dict], m: float = 5.0, deg: float = 10.0) -> int:
    return int(sum(r["success"] and not (r["error_m"] <= m and r["error_deg"] <= deg) for r in rows))
