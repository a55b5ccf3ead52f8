"""Step 6: PnP-RANSAC localization of every query, and the benchmark's results file.

For each query: SIFT features (same extractor and settings as the database), mutual nearest
neighbour + ratio-test matches against each retrieved database image, 2D-3D correspondences through
the database keypoints' triangulated points, optional covisibility clustering, then
`pycolmap.estimate_and_refine_absolute_pose` with the query's own camera (its focal length estimated
too where queries/unknown_focal.txt lists it). A query counts as localized when its pose passes
every rule (--min-inliers, --min-inlier-coverage, --max-rival-ratio). One whose pose a rule rejects
is unverified: the results file holds its PnP estimate all the same (--unverified-pose estimate, as
hloc writes every pose RANSAC finds) or the top retrieved image's pose (--unverified-pose stand-in).
A query with no PnP pose at all gets the top retrieved image's pose (as hloc does): a stand-in. The
summary and the log list the localized, the unverified (by rule) and the stand-in poses apart, so
the rules decide what is trusted without costing the benchmark a pose.

Writes outputs/<name>/[<tag>/]Pose_Estimation_Results.txt ("<basename> qw qx qy qz tx ty tz",
world-to-camera, the Visual Localization Benchmark's format) and localization_log.jsonl (one
row per query: retrieved images, matches, inliers, time). Interrupted runs resume from the log.

--rerank N re-ranks by local verification (off, as in the paper): the first N candidates of a
pairs file that deep (by default the pairs step's full ranking, pairs-query-ranked.txt) are matched
and scored, optionally verified by their own PnP, and the best --rerank-keep are pooled for PnP
(mmcrossvit/localization.py; every option: docs/localization.md). The log row lists the
candidates, their scores, and as `retrieved` the kept images, best first.

--retrieval oracle replaces the student's retrieval by ground truth: each query's candidates are
the database images sharing the most 3D points visible from its true pose (the ceiling that
retrieval can reach; written under the 'oracle' tag); --retrieval all uses every database image.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..colmap_io import read_pairs, write_poses
from ..device import CHOICES, HELP
from ..errors import DataError
from ..evaluation import oracle_candidates
from .. import records
from ..features import FeatureStore, extract_features, feature_names, feature_stamps, stored_config
from ..layout import GT_POSES, Dataset, check_results_file
from ..localization import (REJECTIONS, RERANK_FALLBACKS, LocalizeOptions, SfMModel, localize_query, map_region,
                            written_pose)
from ..parallel import mapped, resolve_workers
from ..paths import ORACLE_TAG, RunLayout
from ..storage import read_jsonl, write_json
from ..visualization import save_topdown

log = logging.getLogger("localize")
STEP = "localize"
S = argparse.SUPPRESS
UNVERIFIED_POSES = ("estimate", "stand-in")


def _unverified_pose(v: str) -> str:  # "fallback": the name before "stand-in", still accepted
    return "stand-in" if v == "fallback" else v
# rows of an older log lack the rejected estimates: part of every row's key, so they are recomputed
LOG_FORMAT = 2


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("localization: what a user tunes (docs/localization.md)")
    g.add_argument("--num-retrieved", type=int, default=S,
                   help="use only the first K candidates of the pairs file per query (None: all)")
    g.add_argument("--rerank", type=int, default=S,
                   help="re-rank the first N candidates of the pairs file by their number of distinct 2D-3D "
                        "correspondences and localize with the best --rerank-keep (0: off, the paper's "
                        "localization); without --pairs the candidates come from the pairs step's full ranking "
                        "(pairs-query-ranked.txt); --retrieval pairs only")
    g.add_argument("--rerank-keep", type=int, default=S,
                   help="candidates kept after re-ranking (<= --rerank; used only with --rerank)")
    g.add_argument("--min-inliers", type=int, default=S, help="fewer PnP inliers: not localized (the pose is unverified)")
    g.add_argument("--min-inlier-coverage", dest="min_coverage", type=float, default=S,
                   help="a pose whose inliers' convex hull covers less than this fraction of the image counts as "
                        "a failure (0: off; studies/results/inlier_coverage.md)")
    g.add_argument("--max-rival-ratio", type=float, default=S,
                   help="the place ratio test: the candidates get a PnP of their own, and an accepted pose fails "
                        "when the best candidate placed over --rival-radius metres from it has at least this "
                        "fraction of the inliers of the best one placed near it (0: off; "
                        "studies/results/acceptance_signals*.md)")
    g.add_argument("--rival-radius", type=float, default=S,
                   help="metres between a candidate's own pose and the accepted one beyond which the place ratio "
                        "test counts it as another place (used only with --max-rival-ratio)")
    g.add_argument("--unverified-pose", type=_unverified_pose, choices=UNVERIFIED_POSES, default=S,
                   help="what the results file holds for a query whose PnP pose a rule rejected: the estimate "
                        "(as hloc, which writes every pose RANSAC finds; the rules then only decide what counts "
                        "as localized) or the top retrieved image's pose (stand-in); the log keeps both")
    g = p.add_argument_group("localization: held by the presets (the measurements behind them: docs/)")
    g.add_argument("--oracle-num-retrieved", type=int, default=S,
                   help="candidates per query with --retrieval oracle")
    g.add_argument("--covisibility", action="store_true", default=S,
                   help="cluster candidates by covisibility (hloc's option)")
    g.add_argument("--rerank-points", action=argparse.BooleanOptionalAction, default=S,
                   help="score each candidate by matching the query to its triangulated keypoints only (a few "
                        "times cheaper than matching every keypoint; the kept candidates are matched in full "
                        "for PnP); used only with --rerank")
    g.add_argument("--rerank-pnp", type=int, default=S,
                   help="verify the N best-scored candidates by a PnP of their own and pool only those whose pose "
                        "lies within --rerank-agree metres of the best-verified one's (0: off, pool the best "
                        "--rerank-keep by score); used only with --rerank")
    g.add_argument("--rerank-agree", type=float, default=S,
                   help="metres between a verified candidate's camera centre and the best one's for it to be "
                        "pooled (the benchmark's coarsest threshold is 5 m); used with --rerank-pnp")
    g.add_argument("--rerank-fallback", choices=RERANK_FALLBACKS, default=S,
                   help="when no verified candidate reaches --min-inliers on its own: pool the best-verified "
                        "one alone (best) or the best --rerank-keep by score, as without --rerank-pnp (scores); "
                        "used only with --rerank-pnp")
    g.add_argument("--ratio", type=float, default=S, help="Lowe's ratio test threshold")
    g.add_argument("--ransac-max-error", type=float, default=S,
                   help="RANSAC inlier threshold in pixels (at a longer image side of --ransac-ref-size)")
    g.add_argument("--ransac-ref-size", type=float, default=S,
                   help="longer image side at which --ransac-max-error holds; the threshold scales with each "
                        "query's size (None: a fixed threshold)")
    g = p.add_argument_group("resources (the results do not depend on them)")
    g.add_argument("--workers", type=int, default=S, help="processes localizing queries (0: one per CPU core)")
    g.add_argument("--device", choices=CHOICES, default=S, help=HELP + "; used for descriptor matching")
    p.add_argument("--retrieval", choices=["pairs", "oracle", "all"], default="pairs",
                   help="candidates: the retrieval pairs file, ground-truth covisibility (oracle), or every db image")
    p.add_argument("--pairs", type=Path, default=None,
                   help="pairs file (default outputs/<name>/pairs-query.txt; with --rerank, the deeper "
                        "outputs/<name>/pairs-query-ranked.txt)")
    p.add_argument("--tag", default=None,
                   help="write results under outputs/<name>/<tag>/ (default: 'oracle' for the oracle, else none)")
    p.add_argument("--overwrite", action="store_true", help="ignore the log of an earlier run (rows whose inputs "
                   "changed are recomputed anyway)")


def tag_of(cfg) -> str:
    """Where the results go: --tag, else 'oracle' for the oracle, else the run's own folder."""
    return cfg.tag if cfg.tag is not None else (ORACLE_TAG if cfg.retrieval == "oracle" else "")


def record_name(cfg) -> str:
    return f"{STEP}_{tag_of(cfg)}" if tag_of(cfg) else STEP


def rerank_of(cfg) -> tuple[int, int | None]:
    """(candidates verified, kept) of re-ranking; (0, None) when off. It re-ranks a pairs file's
    candidates: the oracle and --retrieval all ignore it (a preset may turn it on for the pipeline)."""
    n = (getattr(cfg, "rerank", 0) or 0) if cfg.retrieval == "pairs" else 0
    return (n, getattr(cfg, "rerank_keep", None)) if n else (0, None)


def check(run: RunLayout, cfg) -> None:
    """Settings that cannot work, before anything is written (steps.execute)."""
    if (getattr(cfg, "rerank", 0) or 0) < 0:
        raise DataError(None, f"--rerank must be >= 0 (0: off), got {cfg.rerank}")
    rerank, keep = rerank_of(cfg)
    if rerank and (keep is None or not 1 <= keep <= rerank):
        raise DataError(None, f"--rerank {rerank} re-ranks {rerank} candidates and keeps --rerank-keep of them: "
                              f"it must lie in 1..{rerank}, got {keep}")
    if (getattr(cfg, "rerank_pnp", 0) or 0) < 0 or (getattr(cfg, "rerank_pnp", 0) and not cfg.rerank_agree > 0):
        raise DataError(None, f"--rerank-pnp must be >= 0 (0: off) and --rerank-agree > 0 metres, got "
                              f"{cfg.rerank_pnp} and {cfg.rerank_agree}")
    if (getattr(cfg, "max_rival_ratio", 0) or 0) < 0:
        raise DataError(None, f"--max-rival-ratio must be >= 0 (0: off), got {cfg.max_rival_ratio}")
    if (getattr(cfg, "max_rival_ratio", 0) or 0) > 0 and not cfg.rival_radius > 0:
        raise DataError(None, f"--rival-radius must be > 0 metres with --max-rival-ratio, got {cfg.rival_radius}")
    if getattr(cfg, "unverified_pose", "estimate") not in UNVERIFIED_POSES:
        raise DataError(None, f"--unverified-pose must be one of {', '.join(UNVERIFIED_POSES)}, "
                              f"got {cfg.unverified_pose!r}")
    if getattr(cfg, "rerank_fallback", "best") not in RERANK_FALLBACKS:
        raise DataError(None, f"--rerank-fallback must be one of {', '.join(RERANK_FALLBACKS)}, "
                              f"got {cfg.rerank_fallback!r}")
    if rerank and cfg.num_retrieved is not None:
        raise DataError(None, "--num-retrieved truncates the pairs without re-ranking; with --rerank N the first N "
                              "candidates are verified and --rerank-keep of them kept: leave --num-retrieved unset")


def pairs_file(run: RunLayout, cfg) -> Path:
    if cfg.pairs:
        return Path(cfg.pairs)
    return run.pairs_query_ranked if rerank_of(cfg)[0] else run.pairs_query


def candidates(run: RunLayout, cfg, ds: Dataset, model: SfMModel) -> dict[str, list[str]]:
    queries = ds.queries
    rerank = rerank_of(cfg)[0]
    if cfg.retrieval == "pairs":
        pairs_path = pairs_file(run, cfg)
        if not Path(pairs_path).exists():
            hint = ("with --rerank the candidates come from the pairs step's full ranking; re-run "
                    "generate_localization_pairs.py (it writes it), or pass a pairs file at least "
                    f"{rerank} deep per query with --pairs") if rerank and not cfg.pairs else \
                "run generate_localization_pairs.py first"
            raise DataError(pairs_path, f"pairs file not found; {hint}")
        cands: dict[str, list[str]] = {q: [] for q in queries}
        for lineno, (q, d) in enumerate(read_pairs(pairs_path), start=1):
            if q not in queries:
                raise DataError(pairs_path, f"{q!r} is not a query of {ds.root}", lineno)
            if d not in model.poses:
                raise DataError(pairs_path, f"{d!r} is not a database image of the SfM model", lineno)
            cands[q].append(d)
        k = cfg.num_retrieved
        if rerank:
            depth = max(map(len, cands.values()), default=0)
            if depth < min(rerank, len(model.poses)):  # shallower than asked, though the database is deeper
                raise DataError(pairs_path, f"--rerank {rerank} needs the first {rerank} candidates of each query, "
                                            f"but this pairs file lists at most {depth} per query; pass a deeper one "
                                            f"with --pairs (e.g. the pairs step's {run.pairs_query_ranked.name}) "
                                            f"or lower --rerank")
            k = rerank
    elif cfg.retrieval == "oracle":
        if ds.gt_poses is None:
            raise DataError(ds.root / GT_POSES, "the oracle needs ground-truth query poses")
        cands, k = oracle_candidates(ds, model, cfg.oracle_num_retrieved), None
    else:
        cands, k = {q: sorted(model.point3d_ids) for q in queries}, cfg.num_retrieved
    return {q: c[:k] for q, c in cands.items()} if k else cands


def _localize_init(model: SfMModel, features: Path, opts: LocalizeOptions):
    return model, FeatureStore(features), opts


def _localize_one(state, job) -> dict:
    """One query's log row (pose included); run in this process or a worker."""
    model, features, opts = state
    q, camera, cands, refine_focal = job
    r = localize_query(q, camera, cands, model, features, replace(opts, refine_focal=refine_focal))
    row = {**r.log_row(), "qvec": r.pose.qvec.tolist(), "tvec": r.pose.t.tolist()}
    if r.estimate is not None:  # a rejected pose: qvec / tvec are the stand-in's
        row.update(estimate={"qvec": r.estimate.qvec.tolist(), "tvec": r.estimate.t.tolist()})
    return row


def _read_log(path: Path) -> dict[str, dict]:
    """Rows of an earlier run's log by query; a torn last line (an interruption) ends it."""
    return {r["query"]: r for r in read_jsonl(path) if "query" in r} if path.exists() else {}


def _log_lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return -1


def options(cfg) -> LocalizeOptions:
    """The step's settings as the localization options (re-ranking only where rerank_of says so)."""
    rerank, keep = rerank_of(cfg)
    return LocalizeOptions.of(cfg, rerank_keep=keep, rerank_points=bool(rerank and cfg.rerank_points),
                              rerank_pnp=cfg.rerank_pnp if rerank else 0)


def _localize(run, cfg, log_path: Path, done: dict, todo: list, queries: dict, cands: dict, keys: dict,
              model) -> None:
    """Rewrite the log with the rows kept (no torn, stale or dropped row survives), then localize
    `todo`, appending a row per query as it finishes (so an interrupted run resumes); fills `done`."""
    with open(log_path, "w") as logf:
        logf.writelines(json.dumps(r) + "\n" for r in done.values())
        logf.flush()
        unknown = Dataset(run.dataset).unknown_focal
        jobs = [(q, queries[q].camera, cands[q], q in unknown) for q in todo]
        with mapped(_localize_one, jobs, cfg.workers, _localize_init, (model, run.features, options(cfg))) as results:
            for q, r in tqdm(zip(todo, results), total=len(todo), desc="localize", unit="query"):
                row = {**r, "condition": queries[q].condition, "key": keys[q],
                       # what qvec / tvec are for a query not localized: a stand-in, not an estimate (the
                       # results file holds `estimate` instead, when there is one, with --unverified-pose estimate)
                       "stand_in": None if r["success"] else ("top retrieved image" if cands[q] else "identity")}
                logf.write(json.dumps(row) + "\n")
                logf.flush()
                done[q] = row


def main(run: RunLayout, cfg: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ds = Dataset(run.dataset)
    tag = tag_of(cfg)
    results_path, log_path = run.results_file(tag), run.localization_log(tag)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    if not run.sfm_points.exists():
        raise DataError(run.sfm, "no SfM model; run preprocessing.py first")
    model = SfMModel.load(run.sfm)
    queries = ds.queries
    cands = candidates(run, cfg, ds, model)
    empty = [q for q, c in cands.items() if not c]
    # e.g. new photos added to a map whose held-out photos have poses: the oracle has nothing for them
    no_truth = [q for q in empty if cfg.retrieval == "oracle" and q not in (ds.gt_poses or {})]
    if len(empty) > len(no_truth):
        log.warning("%d queries have no candidates (e.g. %s); they get an identity pose and count as failed",
                    len(empty) - len(no_truth), sorted(set(empty) - set(no_truth))[0])
    # features of queries preprocessing did not see, with the database's settings (preprocessing
    # re-extracts changed images and retries unreadable ones; they are not reported again here)
    missing = sorted(set(queries) - feature_names(run.features))
    if missing:
        log.info("extracting features for %d queries", len(missing))
        extract_features(ds.images_dir, missing, run.features, stored_config(run.features), workers=cfg.workers,
                         device=cfg.device)

    # each log row carries the key of what produced it: its candidates, the settings, the model
    # and the query's features; rows whose key still matches are reused, the rest recomputed
    settings = {k: getattr(cfg, k) for k in ("ratio", "ransac_max_error", "ransac_ref_size", "covisibility",
                                             "min_inliers", "seed")}
    rerank, rerank_keep = rerank_of(cfg)
    if rerank:  # only when on: rows localized without re-ranking keep their keys (rerank_keep is then unused)
        settings.update(rerank=rerank, rerank_keep=rerank_keep)
        if cfg.rerank_points:  # likewise: rows re-ranked on every keypoint keep their keys
            settings.update(rerank_points=True)
        if cfg.rerank_pnp:  # likewise: rows re-ranked without PnP verification keep their keys
            settings.update(rerank_pnp=cfg.rerank_pnp, rerank_agree=cfg.rerank_agree)
            if cfg.rerank_fallback != "best":  # likewise: rows verified before the option existed keep their keys
                settings.update(rerank_fallback=cfg.rerank_fallback)
    if cfg.min_coverage:  # likewise: rows localized without the coverage rule keep their keys
        settings.update(min_coverage=cfg.min_coverage)
    if cfg.max_rival_ratio:  # likewise for the place ratio test
        settings.update(max_rival_ratio=cfg.max_rival_ratio, rival_radius=cfg.rival_radius)
    settings.update(log_format=LOG_FORMAT)
    base = records.make_key(settings, {"sfm": records.upstream(run.record("sfm"), run.sfm_points)})
    feats = feature_stamps(run.features, list(queries))
    # a query whose focal length is a guess (queries/unknown_focal.txt) has it refined with the pose
    keys = {q: records.digest([base, cands[q], queries[q].camera.line(), feats[q]]
                              + (["refine_focal"] if q in ds.unknown_focal else [])) for q in queries}
    done = {} if cfg.overwrite else _read_log(log_path)
    stale = {q: r for q, r in done.items() if q in queries and r.get("key") != keys[q]}
    dropped = sorted(set(done) - set(queries))
    if stale or dropped:
        moved = sum(r.get("candidates", r.get("retrieved")) != cands[q] for q, r in stale.items())
        parts = ([f"pairs changed for {moved} queries"] if moved else []) + \
                ([f"settings, model or features changed for {len(stale) - moved}"] if len(stale) > moved else []) + \
                ([f"{len(dropped)} queries no longer listed (dropped)"] if dropped else [])
        print(f"{'; '.join(parts)}: re-localizing {len(stale)} queries")
    done = {q: r for q, r in done.items() if q in queries and q not in stale}
    todo = [q for q in sorted(queries) if q not in done]
    changed = bool(todo or stale or dropped or _log_lines(log_path) != len(done))
    if changed:
        _localize(run, cfg, log_path, done, todo, queries, cands, keys, model)
    # else every row is current: the log is left as it is (an up-to-date run writes nothing)
    region = map_region(model)
    written = {q: written_pose(r, cfg.unverified_pose, region) for q, r in sorted(done.items())}
    write_poses(results_path, {ds.results_name(q): pose for q, (pose, _) in written.items()})
    check_results_file(results_path, ds)  # the benchmark's format: every query once, basenames, unit quaternions
    if changed or not run.topdown(tag).exists():
        save_topdown(run.topdown(tag), model.poses, ds.gt_poses, {q: pose for q, (pose, _) in written.items()},
                     model.xyz, {q for q, r in done.items() if r["success"]})
    failed = sorted(q for q, r in done.items() if not r["success"])
    unverified = {rule: sorted(q for q in failed if done[q].get("rejected_by") == rule) for rule in REJECTIONS}
    stand_in = {kind: sorted(q for q, (_, what) in written.items() if what == kind)
                for kind in ("top retrieved image", "identity")}
    times = np.array([sum(r["seconds"].values()) for r in done.values()])
    summary = {"queries": len(done), "localized": len(done) - len(failed), "failed": failed,
               # poses RANSAC found that a rule rejected, by rule; in the results file with --unverified-pose estimate
               "unverified": unverified, "unverified_pose": cfg.unverified_pose,
               # queries whose results-file pose is a stand-in, not an estimate
               "stand_in_poses": stand_in,
               # unverified estimates outside the map's reach (localization.MAP_REACH): the stand-in is written instead
               "off_map_estimates": sorted(q for q, (_, what) in written.items()
                                           if what != "unverified" and done[q].get("estimate")
                                           and cfg.unverified_pose == "estimate"),
               "median_seconds_per_query": float(np.median(times)) if len(times) else 0.0,
               "mean_seconds": {k: float(np.mean([r["seconds"][k] for r in done.values()]))
                                for k in ("features", "matching", "pnp")} if done else {},
               "retrieval": cfg.retrieval, "rerank": {"candidates": rerank, "keep": rerank_keep} if rerank else None,
               "pairs": str(pairs_file(run, cfg)) if cfg.retrieval == "pairs" else None,
               "results": str(results_path),
               "matching_threads": torch.get_num_threads(), "workers": resolve_workers(cfg.workers)}
    write_json(run.localization_summary(tag), summary)
    n_unv = sum(map(len, unverified.values()))
    print(f"{summary['localized']}/{summary['queries']} queries localized; {n_unv} more have a pose that a rule "
          f"rejected ({', '.join(f'{len(v)} {k}' for k, v in unverified.items())}; in the results file: "
          f"{'the estimate' if cfg.unverified_pose == 'estimate' else 'a stand-in'}); "
          f"{len(stand_in['top retrieved image'])} got the top retrieved image's pose, "
          f"{len(stand_in['identity'])} the identity (listed in {run.localization_summary(tag).name}) -> {results_path}")
    if ds.gt_poses is None:
        print("No ground truth: submit this file at https://www.visuallocalization.net/ (Aachen Day-Night).")
    return summary
