"""Which statistic of an accepted pose tells a wrong pose from a right one, on a run's own logs.

    python studies/acceptance_signals.py --dataset datasets/demo --preset demo

Every query a localization log (student retrieval and, if present, the oracle's) accepted, or
rejected by an acceptance rule alone, is localized again from the same retrieved images
(`diagnosis.replay_accepted`) and each signal of its pose is computed:

    inliers              PnP inliers (localize.py --min-inliers thresholds it)
    inlier ratio         inliers / pooled 2D-3D correspondences
    coverage             image fraction inside the inliers' convex hull (--min-inlier-coverage)
    centre sigma m       1-sigma camera-centre error from the inliers at 1 px noise
    rotation sigma deg   the same for the rotation (acceptance.pose_uncertainty)
    verified candidates  candidates whose own PnP reached --min-inliers (runs with --rerank-pnp)
    rival ratio          the place ratio test (localize.py --max-rival-ratio): the most own-PnP inliers
                         of a candidate whose own pose lies over --rival-radius metres from the accepted
                         pose, over the most of one within it, or 1 (candidates: the re-ranking's if
                         logged, else the retrieved images)

A pose is wrong beyond (5 m, 10°). Per signal: the wrong poses' values, the cut that rejects
all of them, the correct poses that cut loses, and the AUC (the chance that a random correct
pose scores better than a random wrong one; 1 separates them fully).

Then the place ratio test's two settings, crossed (--rival-radii x --rival-ratios): among the poses
that pass the run's coverage rule, the wrong poses each setting rejects and the poses within
(0.25 m, 2°) it loses, by day and night, from the same candidates' own PnP. Writes
<results>/acceptance_signals_<name>.{md,json}.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

import sys  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # report.py, shared with the benchmarks
from report import STUDY_RESULTS, finish, machine_info, markdown_table, open_replay, replay_command, run_parser  # noqa: E402  (puts the repository on sys.path)

from mmcrossvit.acceptance import inlier_coverage, pose_uncertainty, rival_ratio, rival_ratio_at  # noqa: E402
from diagnosis import localization_logs, replay_accepted  # noqa: E402
from mmcrossvit.evaluation import THRESHOLDS, pose_error  # noqa: E402
from mmcrossvit.features import FeatureStore, read_features  # noqa: E402
from mmcrossvit.layout import Dataset  # noqa: E402
from mmcrossvit.localization import SfMModel, candidate_pose, match_image, ransac_threshold  # noqa: E402
from mmcrossvit.paths import RunLayout  # noqa: E402

# name -> True when a higher value means a more trustworthy pose
SIGNALS = {"inliers": True, "inlier ratio": True, "coverage": True, "centre sigma m": False,
           "rotation sigma deg": False, "verified candidates": True, "rival ratio": False}


def own_poses(model: SfMModel, store: FeatureStore, s: dict, r: dict, q) -> list:
    """Every candidate's own PnP (inliers, pose) as localize.py --max-rival-ratio computes it: on the
    matches re-ranking scored it with (or its full matches without re-ranking)."""
    qf = read_features(store.path, r["query"])
    thr = ransac_threshold(q.camera, s["ransac_max_error"], s["ransac_ref_size"])
    points_only = bool(r.get("candidates")) and s["rerank_points"]
    return [candidate_pose(model, qf, match_image(model, qf, store, n, s["ratio"], points_only=points_only), q.camera,
                           thr, s["seed"]) for n in r.get("candidates") or r["retrieved"]]


def own_rival_ratio(model: SfMModel, store: FeatureStore, s: dict, r: dict, q, pose, own: list | None = None) -> float:
    """`acceptance.rival_ratio` of `pose` as localize.py --max-rival-ratio computes it (`own_poses`,
    unless given); the log's value when the run had the test on."""
    if r.get("rival_ratio") is not None:
        return r["rival_ratio"]
    own = own_poses(model, store, s, r, q) if own is None else own
    return rival_ratio([k for k, _ in own], [p for _, p in own], pose.center, s["rival_radius"])


def signals(run: RunLayout, ds: Dataset, model: SfMModel, s: dict, log: Path) -> list[dict]:
    rows = []
    store = FeatureStore.of(run.features)
    for r, res, rejected in replay_accepted(ds, model, run.features, s, log):
        q = ds.queries[r["query"]]
        mask = np.asarray(res.inliers, bool)
        dt, dr = pose_error(res.pose, ds.gt_poses[r["query"]])
        sc, sr = pose_uncertainty(res.points3d[mask], res.pose, q.camera)
        pnp = r.get("pnp_inliers")
        m, deg = THRESHOLDS[-1]
        own = own_poses(model, store, s, r, q)
        fine_m, fine_deg = THRESHOLDS[0]
        rows.append({"query": r["query"], "condition": q.condition, "rejected_by_rule": rejected,
                     "error_m": dt, "error_deg": dr, "wrong": bool(dt > m or dr > deg),
                     "fine": bool(dt <= fine_m and dr <= fine_deg),
                     # each candidate's own inliers and its camera's distance from the pose (the grid)
                     "own": [[k, None if p is None else float(np.linalg.norm(p.center - res.pose.center))]
                             for k, p in own],
                     "inliers": int(mask.sum()), "inlier ratio": float(mask.mean()),
                     "coverage": inlier_coverage(res.points2d[mask], q.camera),
                     "centre sigma m": sc, "rotation sigma deg": sr,
                     "verified candidates": None if pnp is None else sum(x >= s["min_inliers"] for x in pnp),
                     "rival ratio": own_rival_ratio(model, store, s, r, q, res.pose, own)})
    return rows


def rival_grid(rows: list[dict], min_coverage: float, radii: list[float], ratios: list[float]) -> list[dict]:
    """The place ratio test at each (radius, ratio) on the poses that pass the coverage rule: the
    wrong ones it rejects and the ones within (0.25 m, 2°) it loses, by condition."""
    rows = [r for r in rows if min_coverage <= 0 or r["coverage"] >= min_coverage]
    out = []
    for radius in radii:
        values = [rival_ratio_at([d for _, d in r["own"]], [k for k, _ in r["own"]], radius) for r in rows]
        for ratio in ratios:
            rej = [r for r, v in zip(rows, values) if v >= ratio]
            out.append({"radius": radius, "ratio": ratio, "poses": len(rows),
                        "wrong": sum(r["wrong"] for r in rows), "wrong_rejected": sum(r["wrong"] for r in rej),
                        **{f"fine_lost_{c}": sum(r["fine"] for r in rej if r["condition"] == c)
                           for c in ("day", "night")},
                        **{f"fine_{c}": sum(r["fine"] for r in rows if r["condition"] == c) for c in ("day", "night")}})
    return out


def separation(rows: list[dict], signal: str, higher: bool) -> dict | None:
    """The cut that rejects every wrong pose on `signal`, what it costs, and the AUC."""
    vals = [(r[signal] if higher else -r[signal], r["wrong"]) for r in rows if r[signal] is not None]
    wrong = np.array([v for v, w in vals if w], float)
    right = np.array([v for v, w in vals if not w], float)
    if not len(vals):
        return None
    cut = wrong.max() if len(wrong) else -np.inf  # a pose passes when its value is above the cut
    auc = None
    if len(wrong) and len(right):
        auc = float(((right[:, None] > wrong[None]).sum() + 0.5 * (right[:, None] == wrong[None]).sum())
                    / (len(right) * len(wrong)))
    sign = 1 if higher else -1
    return {"wrong_values": sorted(float(sign * v) for v in wrong),
            "cut": None if not len(wrong) else float(sign * cut),
            "correct_lost": int((right <= cut).sum()), "correct": int(len(right)), "auc": auc}


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3g}"


def main(argv=None):
    ap = run_parser(__doc__, STUDY_RESULTS)
    ap.add_argument("--rival-radii", type=float, nargs="+", default=[5.0, 10.0, 20.0, 30.0, 50.0],
                    help="place ratio test radii (metres) of the grid")
    ap.add_argument("--rival-ratios", type=float, nargs="+", default=[0.5, 0.625, 0.75, 0.9],
                    help="place ratio test thresholds of the grid")
    args = ap.parse_args(argv)
    run, ds, model, seed = open_replay(args)
    result = {"machine": machine_info(), "runs": {}}
    md = [f"# Acceptance signals on `{run.name}` ({args.preset} preset)", "",
          replay_command("acceptance_signals.py", args, run, seed), "",
          "Accepted poses (and those an acceptance rule alone rejected), localized again. Wrong: beyond (5 m, 10°). "
          "Cut: the value at or past which every wrong pose is rejected (≤ for inliers, ratio, coverage and "
          "verified candidates; ≥ for the sigmas and the rival ratio); lost: correct poses that cut rejects too. "
          "AUC: the chance that a correct pose scores better than a wrong one.", ""]
    for label, log, settings in localization_logs(run, args.preset, seed):
        rows = signals(run, ds, model, settings, log)
        seps = {k: separation(rows, k, hi) for k, hi in SIGNALS.items()}
        grid = rival_grid(rows, settings["min_coverage"], args.rival_radii, args.rival_ratios)
        # each candidate's own PnP stays out of the file (100 per pose); the grid holds what it gave
        result["runs"][label] = {"log": str(log), "poses": [{k: v for k, v in r.items() if k != "own"} for r in rows],
                                 "separation": seps, "rival_grid": grid}
        n_wrong = sum(r["wrong"] for r in rows)
        table = [[k, ", ".join(_fmt(v) for v in sep["wrong_values"]), _fmt(sep["cut"]),
                  f"{sep['correct_lost']} of {sep['correct']}", _fmt(sep["auc"])]
                 for k, sep in seps.items() if sep is not None]
        md += [f"## {label} retrieval ({log})", "",
               f"{len(rows)} poses, {n_wrong} wrong: "
               + (", ".join(f"{Path(r['query']).name} {r['error_m']:.0f} m / {r['error_deg']:.0f}°"
                            for r in rows if r["wrong"]) or "none") + ".", "",
               markdown_table(["signal", "wrong poses' values", "cut", "correct lost", "AUC"], table), ""]
        g0 = grid[0] if grid else None
        if g0:
            md += [f"The place ratio test on the {g0['poses']} poses that pass the coverage rule "
                   f"({settings['min_coverage']}; {g0['wrong']} wrong, {g0['fine_day']} day and {g0['fine_night']} "
                   f"night within (0.25 m, 2°)): wrong rejected, and day / night poses within (0.25 m, 2°) lost.", "",
                   markdown_table(["radius m"] + [f"ratio {x:g}" for x in args.rival_ratios],
                                  [[f"{radius:g}"] + [f"{g['wrong_rejected']} of {g['wrong']}; -{g['fine_lost_day']} / "
                                                      f"-{g['fine_lost_night']}" for g in grid if g["radius"] == radius]
                                   for radius in args.rival_radii]), ""]
    finish(str(Path(args.results) / f"acceptance_signals_{run.name}"), md, result)


if __name__ == "__main__":
    main()
