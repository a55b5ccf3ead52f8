"""The cost curve's report: the plot and the Markdown/JSON tables of the measurements and of their
fits and extrapolations (benchmarks/cost_curve_fit.py). benchmarks/cost_curve.py runs the
measurements and calls `report`.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from cost_curve_fit import (AACHEN, CITY, MEMORY_LIMIT_MB, STEPS, SUPERLINEAR, TRAINERS, WORSE_THAN_LINEAR, analyse,
                            curve, extend_memory, extend_time, extrapolate, grows_worse, growth, memory_slope,
                            pixel_ratio)
from measure_process import MB, SAMPLE_S
from report import finish, machine_info, markdown_table, write_report


# ---------------------------------------------------------------------------------------------
# report

def fmt_s(v) -> str:
    if v is None:
        return "-"
    if v >= 3600 * 48:
        return f"{v / 86400:,.1f} d"
    if v >= 3600:
        return f"{v / 3600:,.1f} h"
    if v >= 120:
        return f"{v / 60:,.1f} min"
    return f"{v:,.1f} s"


def fmt_mb(v) -> str:
    if v is None:
        return "-"
    return f"{v / 1024:,.1f} GB" if v >= 10240 else f"{v:,.0f} MB"


def fmt_b(c: dict | None) -> str:
    """The fitted exponent, and the one between the two largest sizes in brackets."""
    if not c or c["fit"] is None:
        return "-"
    out = f"{c['fit']['b']:.2f}"
    if c["b_last"] is not None and len(c["values"]) > 2:
        out += f" ({c['b_last']:.2f})"
    return out


def growth_of(c: dict | None) -> str:
    if not c or c["fit"] is None:
        return "-"
    if c["small"]:
        return "too small to tell"
    return growth(c["b_ext"])


def is_smoke(state: dict, sizes: list[int]) -> bool:
    if not sizes or max(sizes) < 1000:
        return True
    cfg = state["sizes"][str(max(sizes))]["config"]
    return cfg["width"] * cfg["height"] < 640 * 480


def plot(analysis: dict, state: dict, path: Path, smoke: bool) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mmcrossvit.storage import atomic_path
    fits = analysis["fits"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, step in enumerate(STEPS):
        if step not in fits:
            continue
        f, col = fits[step], colours[k % len(colours)]
        ns = f["sizes"]
        grid = np.logspace(math.log10(ns[-1]), math.log10(CITY["db"]), 40)
        for ax, c, extend in ((axes[0], f["time"], extend_time), (axes[1], f["memory"], extend_memory)):
            ys = [c["values"][str(n)] for n in ns]
            b = c["b_ext"]
            label = step + (f" (b={b:.2f})" if b is not None and not c["small"] else "")
            ax.plot(ns, ys, marker="o", color=col, label=label, lw=1.6, ls=":" if step == "generate" else "-")
            if len(ns) >= 2:
                ax.plot(grid, [extend(c, N) for N in grid], "--", color=col, lw=1, alpha=0.8)
    for ax, title, unit in ((axes[0], "wall time per step", "seconds"), (axes[1], "peak memory per step", "MB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("database images n (queries in proportion)")
        ax.set_ylabel(unit)
        ax.set_title(title + (" — SMOKE RUN" if smoke else ""))
        ax.grid(alpha=0.3, which="both")
    axes[1].axhline(MEMORY_LIMIT_MB, color="red", ls=":", lw=1)
    for ax in axes:
        top = ax.get_ylim()[1]
        for N, name in ((AACHEN["db"], "Aachen 4,328"), (CITY["db"], "100k")):
            ax.axvline(N, color="grey", ls="--", lw=0.8)
            ax.text(N, top, f"{name} ", va="top", ha="right", fontsize=8, color="grey", rotation=90)
    axes[1].text(axes[1].get_xlim()[0], MEMORY_LIMIT_MB, " 8 GB", color="red", fontsize=8, va="bottom")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Pipeline cost curve: measured (points, solid) and extrapolated (dashed; the generator's town is "
                 "synthetic data only)" + ("\nSMOKE RUN: not the measured curve" if smoke else ""), fontsize=10,
                 color="red" if smoke else "black")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def report(state: dict, args, command: str, quiet: bool = False) -> dict:
    analysis = analyse(state, args)
    sizes = analysis["sizes"]
    if not sizes:
        raise SystemExit(f"nothing measured yet in {args.work}/state.json for sizes {args.sizes}")
    extra = extrapolate(analysis, state, args)
    fits = analysis["fits"]
    smoke = is_smoke(state, sizes)
    largest = sizes[-1]
    lcfg = state["sizes"][str(largest)]["config"]
    px = extra["pixel_ratio"]
    stem = str(args.out)
    png = Path(stem + ".png")
    rows_of = lambda n: state["sizes"][str(n)]["steps"]  # noqa: E731
    cfg_of = lambda n: state["sizes"][str(n)]["config"]  # noqa: E731
    md = ["# Pipeline cost curve" + (" — SMOKE RUN" if smoke else ""), ""]
    if smoke:
        md += ["**SMOKE RUN** (largest size below 1,000 database images, or images below 640x480): these numbers "
               "only show that the script runs; they are not the cost curve. The measured run is "
               "`python benchmarks/cost_curve.py --sizes 100 300 1000`.", ""]
    info = machine_info()
    loads = [r["load_1m_at_start"] for n in sizes for r in rows_of(n).values()
             if r.get("load_1m_at_start") is not None]
    md += [f"`{command}`", "",
           f"Machine: {info['cpu']} ({info['cpu_count']} logical CPUs), torch {info['torch']}; 1-minute load average "
           f"at the start of the steps {min(loads):.2f}-{max(loads):.2f} (each step's is in the JSON)." if loads else
           f"Machine: {info['cpu']} ({info['cpu_count']} logical CPUs).", "",
           f"Each size n is a synthetic town (scene preset `{lcfg['scene_preset']}`, {lcfg['width']}x{lcfg['height']} "
           f"images, supersample {lcfg['supersample']}, no night renderings of the database; "
           + ("the town grows with n at the demo's images per metre of street" if lcfg["town"] == "scaled"
              else "the demo's 4 x 4 blocks at every n") + ": "
           + ", ".join(f"n={n}: {cfg_of(n)['blocks_x']}x{cfg_of(n)['blocks_y']} blocks, "
                       f"{cfg_of(n)['day']}+{cfg_of(n)['night']} day+night queries" for n in sizes)
           + f"), then every step script with `--preset {lcfg['preset']}` in its own process; the trainers stop "
           f"after {lcfg['train_epochs']} epoch(s) and validate once (`--stop-after {lcfg['train_epochs']} "
           f"--val-every {lcfg['train_epochs']}`). Queries: {args.queries_per_db:.3f} per database image, "
           f"{100 * args.night_fraction:.1f}% at night (Aachen: 922 for 4,328, 98 at night).", "",
           "Peak memory is the larger of the step's ru_maxrss from os.wait4 (its largest single process, worker "
           "processes included) and the peak of the whole process tree's summed PSS sampled every 0.2 s (SIFT "
           "extraction, matching and localization run one worker process per core). Disk: bytes added under the "
           "size's dataset, outputs/ and DataBase/ folders. Start-up is `<script> --help` (interpreter and "
           "imports).", ""]

    # measured
    header = ["step", "start-up s / MB"] + [f"n={n}: s / peak MB / disk MB" for n in sizes]
    table = []
    for step in STEPS:
        if step not in fits:
            continue
        su = state["startup"].get(step, {})
        cells = [step, f"{su.get('seconds', 0):.1f} / {su.get('peak_mb', 0):.0f}"]
        for n in sizes:
            r = rows_of(n).get(step)
            cells.append("-" if r is None else f"{r['seconds']:.1f} / {r['peak_mb']:.0f} / {r['disk_added_mb']:.1f}")
        table.append(cells)
    tot = ["**all steps**", ""]
    for n in sizes:
        rs = rows_of(n)
        tot.append(f"{sum(r['seconds'] for r in rs.values()):.0f} / {max(r['peak_mb'] for r in rs.values()):.0f} / "
                   f"{sum(r['disk_added_mb'] for r in rs.values()):.0f}")
    table.append(tot)
    md += ["## Measured", "", markdown_table(header, table), ""]
    peaks = [f"{step} {fmt_mb(rows_of(largest)[step]['peak_mb'])}" for step in STEPS if step in rows_of(largest)]
    md += [f"Peak memory of each step at the largest size (n={largest:,}): " + ", ".join(peaks) + ".", ""]

    prow = []
    for step in ("preprocess", "teacher", "student"):
        if step not in fits:
            continue
        for part, pc in fits[step]["parts"].items():
            prow.append([f"{step}: {part}"] + [f"{pc['values'][str(n)]:.2f}" if str(n) in pc["values"] else "-"
                                                for n in sizes] + [fmt_b(pc), growth_of(pc)])
    if prow:
        md += ["Parts of the larger steps (seconds; preprocess from its log's timestamps, the trainers from their "
               "summary.json: set-up is process start to the first step, and the student's includes the teacher's "
               "embeddings of the database):", "",
               markdown_table(["part"] + [f"n={n}" for n in sizes] + ["exponent b (two largest)", "growth"], prow), ""]
    per_step = []
    for step in TRAINERS:
        cells = [f"n={n}: {rows_of(n)[step]['seconds_per_step']:.3f} s ({rows_of(n)[step]['steps']} steps)"
                 for n in sizes if rows_of(n).get(step, {}).get("seconds_per_step")]
        if cells:
            per_step.append(f"{step} " + ", ".join(cells))
    if per_step:
        md += ["Seconds per optimisation step (should not depend on n): " + "; ".join(per_step) + ".", ""]
    produced = []
    for n in sizes:
        r = rows_of(n)
        pre, loc = r.get("preprocess", {}), r.get("localize", {})
        sfm = pre.get("sfm") or {}
        produced.append([n, pre.get("features_per_image", "-"), sfm.get("pairs", "-"), sfm.get("points", "-"),
                         sfm.get("observations", "-"),
                         f"{pre['positives_per_anchor']:.1f}" if pre.get("positives_per_anchor") else "-",
                         f"{loc.get('localized', '-')}/{loc.get('queries', '-')}"])
    md += ["What each size produced:", "",
           markdown_table(["n", "SIFT features / image", "db pairs", "3D points", "observations",
                           "positives / anchor", "localized / queries"], produced), ""]

    # growth
    frow, flagged = [], []
    for step in STEPS:
        if step not in fits:
            continue
        f = fits[step]
        mem = f["memory"]
        ns = f["sizes"]
        slope = "-" if len(ns) < 2 else f"{1000 * memory_slope(mem):,.0f}"
        frow.append([step, fmt_b(f["time"]), f"{f['time']['fit']['r2']:.3f}" if f["time"]["fit"] else "-",
                     growth_of(f["time"]), fmt_b(mem), growth_of(mem), slope, fmt_b(f["disk"])])
        if grows_worse(f["time"]):
            flagged.append(step)
    md += ["## Growth", "",
           f"Exponent b of value = base + a·n^b, fitted in log-log space over n = {', '.join(map(str, sizes))} "
           "(base: the start-up's time or memory), and in brackets the exponent between the two largest sizes. "
           "Growth: b ≤ 1.15 linear, ≤ 1.3 about n log n, above that worse than linear, ≥ 1.75 about quadratic "
           "(the larger of the two exponents); 'too small to tell' when the largest size is under 1 s (or a quarter "
           "of the start-up) / 20 MB above start-up.", "",
           markdown_table(["step", "time b", "time R²", "time growth", "memory b", "memory growth",
                           "memory MB per 1,000 images", "disk b"], frow), ""]

    # extrapolation
    erow, over = [], []
    tot = {"aachen": [0.0, 0.0], "city": [0.0, 0.0]}
    for step in STEPS:
        e = extra["steps"].get(step)
        if not e:
            continue
        a, c = e["aachen"], e["city"]
        quad = [m for s, _, _, m in SUPERLINEAR if s == step]
        for v, N in ((a, AACHEN["db"]), (c, CITY["db"])):
            v["peak_with_quadratic_term_mb"] = max(v["peak_mb"] or 0.0,
                                                   fits[step]["m0"] + (quad[0](N) / MB if quad else 0.0))
        note = [a["note"]] if a["note"] else []
        if step == "generate":
            note.append("synthetic data only: Aachen needs none (not in the totals)")
        if step in TRAINERS and a.get("budget_seconds") is not None:
            b = a["budget"]
            note.append(f"as measured ({lcfg['train_epochs']} epoch, 1 validation); the preset's whole budget "
                        f"({b['epochs']} epochs, {b['validations']} validations"
                        + (f", {b['refreshes']} hard-negative refreshes counted as validations"
                           if b["refreshes"] else "")
                        + f"): **{fmt_s(a['budget_seconds'])}** at Aachen, {fmt_s(c['budget_seconds'])} at 100k")
        if quad and a["peak_with_quadratic_term_mb"] > (a["peak_mb"] or 0) + 1:
            note.append(f"with its quadratic term (below): {fmt_mb(a['peak_with_quadratic_term_mb'])} at Aachen, "
                        f"{fmt_mb(c['peak_with_quadratic_term_mb'])} at 100k")
        erow.append([step, fmt_s(a["seconds"]), fmt_mb(a["peak_mb"]), fmt_s(c["seconds"]), fmt_mb(c["peak_mb"]),
                     "; ".join(note)])
        if step != "generate":
            for k, v in (("aachen", a), ("city", c)):
                tot[k][0] += v["budget_seconds"] if v.get("budget_seconds") is not None else (v["seconds"] or 0.0)
                tot[k][1] = max(tot[k][1], v["peak_with_quadratic_term_mb"])
            if a["peak_with_quadratic_term_mb"] > MEMORY_LIMIT_MB:
                over.append(step)
    erow.append(["**pipeline** (preprocess → evaluate; trainers at the preset's whole budget; largest peak)",
                 fmt_s(tot["aachen"][0]), fmt_mb(tot["aachen"][1]), fmt_s(tot["city"][0]), fmt_mb(tot["city"][1]), ""])
    md += ["## Extrapolation", "",
           f"Each step at Aachen Day-Night's size ({AACHEN['db']:,} database images, {AACHEN['queries']} queries) "
           f"and at a {CITY['db']:,}-image city (queries in the same proportion), on this machine: time from the "
           "largest size with the larger of the two exponents above (linear where too small to tell), memory from "
           "the largest size with the MB per image fitted over all sizes (the power law where memory grows worse "
           "than linearly). "
           f"Aachen's images are 1600x1200 where these are {lcfg['width']}x{lcfg['height']}; with "
           f"`--preset {lcfg['preset']}` SIFT sees at most {px['cap']} px a side, so the SIFT part of preprocess is "
           f"scaled by the pixel ratio {px['ratio']:.2f} ({px['aachen']:,.0f} / {px['ours']:,.0f} px), and nothing "
           "else is: matching and localization grow with the features per image (more at Aachen's resolution, "
           "capped by max_num_features), and the trainers and the pairs step decode each full-size JPEG before "
           "resizing it to 120 px, so those would cost more than this table says. The 100k column reaches "
           f"{CITY['db'] / largest:.0f}x beyond the largest measured size: an order of magnitude, not a figure.", "",
           markdown_table(["step", "Aachen time", "Aachen peak memory", "100k time", "100k peak memory", "note"],
                          erow), ""]
    if over:
        md += [f"**Above {MEMORY_LIMIT_MB // 1024} GB at Aachen's size by extrapolation: {', '.join(over)}.**", ""]
    else:
        md += [f"No step is above {MEMORY_LIMIT_MB // 1024} GB at Aachen's size by extrapolation (the quadratic "
               "terms below included).", ""]

    # worse than it needs to be
    qrow = [[step, f"`{where}`", what, fmt_mb(mem(AACHEN["db"]) / MB) if mem(AACHEN["db"]) else "-",
             fmt_mb(mem(CITY["db"]) / MB) if mem(CITY["db"]) else "-"] for step, where, what, mem in SUPERLINEAR]
    md += ["## Steps that grow worse than they need to", "",
           (f"Measured time growth worse than linear (both exponents above {WORSE_THAN_LINEAR}): "
            f"**{', '.join(flagged)}**." if flagged else
            f"No step's measured time grows worse than linear (both exponents above {WORSE_THAN_LINEAR}) over "
            "these sizes."), "",
           "Quadratic terms in the code, from reading it (at these sizes most hide under the per-image costs; "
           "they take over at larger n). Memory is that of the term alone, added to the step's start-up memory "
           "in the 8 GB check:", "",
           markdown_table(["step", "where", "what", "memory at Aachen", "memory at 100k"], qrow), "",
           f"![cost curve]({png.name})", ""]

    result = {"benchmark": "cost_curve", "smoke": smoke, "command": command, "machine": info,
              "settings": {"queries_per_db": args.queries_per_db, "night_fraction": args.night_fraction,
                           "sample_interval_s": SAMPLE_S, "worse_than_linear_above": WORSE_THAN_LINEAR,
                           "memory_limit_mb": MEMORY_LIMIT_MB},
              "startup": state["startup"], "sizes": {str(n): state["sizes"][str(n)] for n in sizes},
              "fits": fits, "extrapolation": extra, "flagged_time": flagged, "over_memory_limit_at_aachen": over,
              "superlinear_terms": [{"step": st, "where": w, "what": t, "memory_mb_aachen": m(AACHEN["db"]) / MB,
                                     "memory_mb_100k": m(CITY["db"]) / MB} for st, w, t, m in SUPERLINEAR],
              "targets": {"aachen": AACHEN, "city": CITY}}
    Path(stem).parent.mkdir(parents=True, exist_ok=True)
    plot(analysis, state, png, smoke)
    if quiet:
        write_report(stem, "\n".join(md + [""]), result)
        return result
    return finish(stem, md, result)
