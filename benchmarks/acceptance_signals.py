"""Which statistic of an accepted pose tells a wrong pose from a right one, on a run's own logs.

    python benchmarks/acceptance_signals.py --dataset datasets/demo --preset demo

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
                         of a candidate whose own pose lies over --rerank-agree metres from the accepted
                         pose, over the most of one within it, or 1 (candidates: the re-ranking's if
                         logged, else the retrieved images)

A pose is wrong beyond (5 m, 10°). Per signal: the wrong poses' values, the cut that rejects
all of them, the correct poses that cut loses, and the AUC (the chance that a random correct
pose scores better than a random wrong one; 1 separates them fully). Writes
<results>/acceptance_signals_<name>.{md,json}.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from report import finish, machine_info, markdown_table, open_replay, replay_command, run_parser  # noqa: E402  (puts the repository on sys.path)

from mmcrossvit.acceptance import inlier_coverage, pose_uncertainty, rival_ratio  # noqa: E402
from mmcrossvit.diagnosis import localization_logs, replay_accepted  # noqa: E402
from mmcrossvit.evaluation import THRESHOLDS, pose_error  # noqa: E402
from mmcrossvit.features import FeatureStore, read_features  # noqa: E402
from mmcrossvit.layout import Dataset  # noqa: E402
from mmcrossvit.localization import SfMModel, candidate_pose, match_image, ransac_threshold  # noqa: E402
from mmcrossvit.paths import RunLayout  # noqa: E402

# name -> True when a higher value means a more trustworthy pose
SIGNALS = {"inliers": True, "inlier ratio": True, "coverage": True, "centre sigma m": False,
           "rotation sigma deg": False, "verified candidates": True, "rival ratio": False}


def own_rival_ratio(model: SfMModel, store: FeatureStore, s: dict, r: dict, q, pose) -> float:
    """`acceptance.rival_ratio` of `pose` as localize.py --max-rival-ratio computes it: every
    candidate's own PnP on the matches re-ranking scored it with (or its full matches without
    re-ranking); the log's value when the run had the test on."""
    if r.get("rival_ratio") is not None:
        return r["rival_ratio"]
    qf = read_features(store.path, r["query"])
    thr = ransac_threshold(q.camera, s["ransac_max_error"], s["ransac_ref_size"])
    points_only = bool(r.get("candidates")) and s["rerank_points"]
    own = [candidate_pose(model, qf, match_image(model, qf, store, n, s["ratio"], points_only=points_only), q.camera,
                          thr, s["seed"]) for n in r.get("candidates") or r["retrieved"]]
    return rival_ratio([k for k, _ in own], [p for _, p in own], pose.center, s["rerank_agree"])


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
        rows.append({"query": r["query"], "condition": q.condition, "rejected_by_rule": rejected,
                     "error_m": dt, "error_deg": dr, "wrong": bool(dt > m or dr > deg),
                     "inliers": int(mask.sum()), "inlier ratio": float(mask.mean()),
                     "coverage": inlier_coverage(res.points2d[mask], q.camera),
                     "centre sigma m": sc, "rotation sigma deg": sr,
                     "verified candidates": None if pnp is None else sum(x >= s["min_inliers"] for x in pnp),
                     "rival ratio": own_rival_ratio(model, store, s, r, q, res.pose)})
    return rows


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
    args = run_parser(__doc__).parse_args(argv)
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
        result["runs"][label] = {"log": str(log), "poses": rows, "separation": seps}
        n_wrong = sum(r["wrong"] for r in rows)
        table = [[k, ", ".join(_fmt(v) for v in sep["wrong_values"]), _fmt(sep["cut"]),
                  f"{sep['correct_lost']} of {sep['correct']}", _fmt(sep["auc"])]
                 for k, sep in seps.items() if sep is not None]
        md += [f"## {label} retrieval ({log})", "",
               f"{len(rows)} poses, {n_wrong} wrong: "
               + (", ".join(f"{Path(r['query']).name} {r['error_m']:.0f} m / {r['error_deg']:.0f}°"
                            for r in rows if r["wrong"]) or "none") + ".", "",
               markdown_table(["signal", "wrong poses' values", "cut", "correct lost", "AUC"], table), ""]
    finish(str(Path(args.results) / f"acceptance_signals_{run.name}"), md, result)


if __name__ == "__main__":
    main()
