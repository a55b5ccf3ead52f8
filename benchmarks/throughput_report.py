"""The throughput page: benchmarks/throughput.py's measurements as Markdown."""
from __future__ import annotations

import torch
from report import markdown_table


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def page(result: dict, args) -> list[str]:
    cpu, flops, s, (h, w) = result["cpu"], result["flops_per_image"], args.student_size, args.netvlad_hw
    m = result["machine"]
    md = ["# Descriptor-extraction throughput", ""]
    if args.quick:
        md += ["**Quick smoke run (`--quick`)**: probe sizes " + ", ".join(map(str, args.matmul_size)) +
               f" once, NetVLAD {args.runs} timed batch, student {args.student_runs} per variant. Not the "
               "figures to report: re-run `python benchmarks/throughput.py` on a quiet machine.", ""]
    passes = "once, before the models" if args.probe_once else "before and after the models (best of both)"
    md += [f"Machine: {m['cpu']} ({m['cpu_count']} logical CPUs), torch {torch.__version__}; load average at start "
           f"{m.get('load_average_1m_5m_15m')}, at end {m.get('load_average_at_end')} (timings taken under load "
           f"are not comparable). Batch {args.batch}, {args.threads} threads unless stated; warm-up "
           f"{args.warmup}, then the median of {args.runs} timed NetVLAD batches and of {args.student_runs} timed "
           f"student batches per variant (the variants timed interleaved); random weights and images. GFLOPs are "
           f"2 x multiply-adds counted by FlopCounterMode (the same count for every variant). The peak is the best "
           f"point of an fp32 N x N matmul probe curve, each size the median of {args.matmul_runs} runs after a "
           f"warm-up, at the models' thread count, run {passes}.", ""]

    # the probe curve: one column per (threads, pass)
    probes = cpu["peak_probe"]
    cols = [(t, i, p["when"]) for t, pk in probes.items() for i, p in enumerate(pk["passes"])]
    rows = []
    for j, n in enumerate(args.matmul_size):
        rows.append([n] + [f"{probes[t]['passes'][i]['curve'][j]['gflops_per_s']:.1f}" for t, i, _ in cols])
    md += ["## Peak probe (CPU fp32 matmul, GFLOP/s)", "",
           markdown_table(["N"] + [f"{t} thread{'s' if t != '1' else ''}, {when}" for t, _, when in cols], rows), ""]
    for t, pk in probes.items():
        line = (f"- Peak at {t} thread{'s' if t != '1' else ''}: **{pk['probe_gflops_per_s']:.1f} GFLOP/s** "
                f"(N={pk['best_n']}).")
        lo, hi = min(p["gflops_per_s"] for p in pk["passes"]), max(p["gflops_per_s"] for p in pk["passes"])
        if hi > 1.15 * lo:
            line += (f" The probe read {lo:.1f} in one pass and {hi:.1f} in the other: the machine's load changed "
                     f"during the run, so its timings are not reliable.")
        if pk["model_exceeded_probe"]:
            line += (f" **A model ran faster than the probe** ({pk['peak_gflops_per_s']:.1f} GFLOP/s): the probe "
                     f"is not this machine's peak (load changed, or a size is missing); fractions below are of "
                     f"that model's figure, and 'of probe' shows the raw ratio.")
        md.append(line)
    md.append("")

    # the variant table, NetVLAD rows first
    rows = []
    student_name, netvlad_name = f"student CrossViT-tiny {s}x{s}", f"NetVLAD-VGG16 {w}x{h}"
    nv_rows = [(t, "eager (inference_mode)", r) for t, r in cpu["netvlad"].items()]
    if cpu.get("netvlad_channels_last"):
        nv_rows.append((str(args.threads), "channels_last", cpu["netvlad_channels_last"]))
    for t, label, r in nv_rows:
        pk = probes[t]
        rows.append([netvlad_name, label, t, f"{r['seconds_per_batch_median']:.3f}", f"{r['images_per_s']:.2f}",
                     f"{r['achieved_gflops_per_s']:.1f}", pct(r["fraction_of_matmul_peak"]),
                     pct(r["fraction_of_probe"]), "", "", ""])
    for name, r in cpu["student_variants"].items():
        t = str(r["threads"])
        if "error" in r:
            rows.append([student_name, name, t, "failed", "", "", "", "", "", "", ""])
            continue
        mark = " **(fastest)**" if name == cpu["best_variant"] else ""
        rows.append([student_name, name + mark, t, f"{r['seconds_per_batch_median']:.4f}", f"{r['images_per_s']:.2f}",
                     f"{r['achieved_gflops_per_s']:.1f}", pct(r["fraction_of_matmul_peak"]),
                     pct(r["fraction_of_probe"]), f"{r['speedup_vs_eager']:.2f}x", f"{r['student_vs_netvlad']:.1f}x",
                     f"{r['compile_seconds']:.1f}" if r.get("compile_seconds") is not None else ""])
    header = ["model", "variant", "threads", "s / batch (median)", "images/s", "achieved GFLOP/s", "of peak",
              "of probe", "vs student eager", "student / NetVLAD (same threads)", "compile s"]
    if not any(pk["model_exceeded_probe"] for pk in probes.values()):  # 'of probe' = 'of peak': drop it
        header, rows = header[:7] + header[8:], [r[:7] + r[8:] for r in rows]
    md += ["## Student inference variants vs NetVLAD (CPU, same run)", "",
           markdown_table(header, rows), ""]

    base, best = cpu["student_variants"]["eager"], cpu["student_variants"][cpu["best_variant"]]
    nv = cpu["netvlad"][str(args.threads)]
    ratio = flops["netvlad"] / flops["student"]
    md.append(f"- Baseline (eager, {args.threads} threads): student / NetVLAD throughput ratio "
              f"**{base['student_vs_netvlad']:.1f}x** vs a FLOPs ratio of {ratio:.1f}x; the student runs at "
              f"{pct(base['fraction_of_matmul_peak'])} of the peak, NetVLAD's convolutions at "
              f"{pct(nv['fraction_of_matmul_peak'])}.")
    md.append(f"- Fastest student variant: **{cpu['best_variant']}** ({best['threads']} "
              f"thread{'s' if best['threads'] != 1 else ''}), "
              f"{best['images_per_s']:.2f} images/s = {best['speedup_vs_eager']:.2f}x the baseline, "
              f"{pct(best['fraction_of_matmul_peak'])} of the peak; student / NetVLAD ratio "
              f"**{best['student_vs_netvlad']:.1f}x** (NetVLAD eager at the same threads)"
              + (f", {best['images_per_s'] / cpu['netvlad_channels_last']['images_per_s']:.1f}x against NetVLAD's "
                 f"channels-last figure." if cpu.get("netvlad_channels_last") else "."))
    compiled = [k for k, r in cpu["student_variants"].items() if r.get("compile_seconds") is not None]
    if compiled:
        md.append(f"- Compile times are cold (inductor's caches off, its in-memory kernels cleared) and not in the "
                  f"timings; the first compiled variant's ({compiled[0]}) also includes inductor's one-time start-up.")
    for name, r in cpu["student_variants"].items():
        if "error" in r:
            md.append(f"- Variant {name} failed on this machine and was skipped: `{r['error']}`")
    if "1thread" in cpu["student_variants"] and "images_per_s" in cpu["student_variants"]["1thread"]:
        one = cpu["student_variants"]["1thread"]
        nv1 = cpu["netvlad"]["1"]
        md.append(f"- Thread scaling, 1 -> {args.threads} threads: student "
                  f"x{base['images_per_s'] / one['images_per_s']:.2f}, "
                  f"NetVLAD x{nv['images_per_s'] / nv1['images_per_s']:.2f}, probe peak "
                  f"x{probes[str(args.threads)]['probe_gflops_per_s'] / probes['1']['probe_gflops_per_s']:.2f}.")
    md.append("- Variants: " + "; ".join(f"`{k}`: {v}" for k, v in result["variants"].items()) + ".")

    if "gpu" in result:
        g = result["gpu"]
        rows = []
        for mode in ("fp32", "bf16_autocast"):
            if mode not in g:
                continue
            sec = g[mode]
            pk = sec["matmul_peak"]
            for name, r in sec["models"].items():
                rows.append([mode, student_name if name == "student" else netvlad_name,
                             f"{r['seconds_per_batch_median']:.4f}", f"{r['images_per_s']:.2f}",
                             f"{r['achieved_gflops_per_s']:.1f}", f"{pk['probe_gflops_per_s']:.1f} (N={pk['best_n']})",
                             pct(r["fraction_of_matmul_peak"]), pct(r["fraction_of_probe"])])
        md += ["", f"## GPU ({g['device']})", "",
               markdown_table(["mode", "model", "s / batch (median)", "images/s", "achieved GFLOP/s",
                               "matmul peak GFLOP/s", "of peak", "of probe"], rows), ""]
        for mode in ("fp32", "bf16_autocast"):
            if mode not in g:
                continue
            pk = g[mode]["matmul_peak"]
            curve = ", ".join(f"{c['n']}: {c['gflops_per_s']:.0f}" for p in pk["passes"] for c in p["curve"])
            md.append(f"- {mode}: student / NetVLAD ratio **{g[mode]['speedup_student_vs_netvlad']:.1f}x**; probe "
                      f"curve (N: GFLOP/s, {' then '.join(p['when'] for p in pk['passes'])}) {curve}."
                      + (" **A model ran faster than the probe**; fractions are of that model's figure "
                         "(cuDNN convolutions may use TF32 while the fp32 matmul probe does not)."
                         if pk["model_exceeded_probe"] else ""))
    else:
        md.append("- No GPU measured (CUDA not available" + (" or --no-gpu" if args.no_gpu else "") + ").")
    return md
