"""Descriptor-extraction throughput, side by side in one run: the student CrossViT-tiny (240) and
NetVLAD-VGG16 (640x480), same batch size and threads; this machine's fp32 matmul peak; the
fraction of it each model achieves (FLOPs counted with FlopCounterMode, 2 x multiply-adds); and
the student's inference variants (inference mode vs no_grad, channels-last, torch.compile, one
thread vs all), each against NetVLAD measured in the same run.

The peak is a probe curve, not one matmul: an N x N fp32 matmul for every --matmul-size, each the
median of --matmul-runs timed runs after a warm-up, at the thread count the models run at; the
peak is the best size. The probe runs before and after the models (the best of both passes is
the peak), so that the machine's load changing during the run is less likely to put a model above
it. If a model still beats the probe, the page says so and takes that model's figure as the peak
(it never prints more than 100%). Variants on one thread are compared with a 1-thread probe.

Each model measurement: warm-up forwards, then the median of N timed forwards (random weights and
images). NetVLAD is measured as before (eager fp32, inference mode). The student's variants at
one thread count are timed interleaved (one batch of each in turn), so that load changes hit them
alike. On a GPU (when torch.cuda.is_available()) both models are measured with synchronisation,
optionally under bf16 autocast (--amp), against the same kind of probe.

    python benchmarks/throughput.py                    # writes benchmarks/results/throughput.{md,json}
                                                       # (about 8 min on 2 cores, two cold compiles included)
    python benchmarks/throughput.py --quick            # smoke run (about 2 min), marked as such
    python benchmarks/throughput.py --variants eager compile --threads 16
"""
from __future__ import annotations

import contextlib
import copy
import os
import statistics
import time

import torch
from baselines import build_netvlad, count_flops, explicit_attention
from peak_probe import apply_peak, combine_passes, matmul_probe, median_seconds
from report import finish, machine_info, parser
from throughput_report import page

from models.build import build_student

# the student's inference variants and what each changes (student_variant builds them)
VARIANTS = {
    "eager": "eager fp32 under torch.inference_mode (the baseline; how NetVLAD is measured)",
    "no_grad": "eager fp32 under torch.no_grad instead of inference_mode",
    "channels_last": "eager fp32, inference_mode, model and images in channels-last memory format "
                     "(the conv patch embeddings)",
    "compile": "torch.compile(model) (default mode), inference_mode; its compile time is reported apart",
    "compile_channels_last": "torch.compile of the channels-last model, channels-last images",
    "compile_freezing": "torch.compile with inductor's freezing (weights folded in as constants and "
                        "pre-packed for oneDNN; its CPU inference recipe), inference_mode",
    "compile_max_autotune": "torch.compile with freezing and max_autotune (mode='max-autotune' on CPU): "
                            "inductor also times its own C++ GEMM templates against ATen's for every matmul "
                            "(long compile)",
    "1thread": "eager fp32, inference_mode, on 1 thread instead of --threads (NetVLAD too)",
}
DEFAULT_VARIANTS = ["eager", "no_grad", "channels_last", "compile", "compile_freezing", "1thread"]
QUICK_VARIANTS = ["eager", "no_grad", "channels_last"]


def parse_args(argv=None):
    p = parser(__doc__, "throughput")
    p.add_argument("--batch", type=int, default=8, help="images per forward, the same for both models")
    p.add_argument("--warmup", type=int, default=1, help="untimed forwards before timing (each model, each variant)")
    p.add_argument("--runs", type=int, default=None,
                   help="timed NetVLAD forwards; the median is reported (default 3; --quick: 1)")
    p.add_argument("--student-runs", type=int, default=None,
                   help="timed student forwards per variant (interleaved across variants); the median is "
                        "reported (default 10; --quick: 3)")
    p.add_argument("--student-size", type=int, default=240, help="student input size")
    p.add_argument("--netvlad-hw", type=int, nargs=2, default=[480, 640], metavar=("H", "W"),
                   help="NetVLAD input height and width")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None,
                   help="student inference variants to time (default: " + " ".join(DEFAULT_VARIANTS) +
                        "; 'eager' is always included, as the baseline). " +
                        "; ".join(f"{k}: {v}" for k, v in VARIANTS.items()))
    p.add_argument("--netvlad-channels-last", action="store_true",
                   help="also time NetVLAD in channels-last memory format (about one more NetVLAD measurement)")
    p.add_argument("--matmul-size", type=int, nargs="+", default=None, metavar="N",
                   help="sizes N of the N x N fp32 matmuls of the CPU peak probe; the best is the peak "
                        "(default 1024 2048 3072 4096 6144; --quick: 1024 2048)")
    p.add_argument("--gpu-matmul-size", type=int, nargs="+", default=[4096, 8192, 16384], metavar="N",
                   help="sizes N of the N x N matmuls of the GPU peak probe; the best is the peak")
    p.add_argument("--matmul-runs", type=int, default=None,
                   help="timed matmuls per size; the median is reported (default 5; --quick: 3)")
    p.add_argument("--probe-once", action="store_true",
                   help="run the peak probe only before the models (default: before and after, best of both)")
    p.add_argument("--amp", action="store_true", help="on GPU, also time both models under bf16 autocast")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU measurements even if CUDA is available")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: probe sizes 1024 2048 once, 3 matmuls per size, NetVLAD 1 timed batch, "
                        "student 3 per variant, variants " + " ".join(QUICK_VARIANTS) + " (flags given explicitly "
                        "win); the page is marked as such")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {"matmul_size": [[1024, 2048, 3072, 4096, 6144], [1024, 2048]], "matmul_runs": [5, 3],
                "runs": [3, 1], "student_runs": [10, 3], "variants": [DEFAULT_VARIANTS, QUICK_VARIANTS]}
    for k, (full, short) in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, short if quick else full)
    args.probe_once = args.probe_once or quick
    args.variants = list(dict.fromkeys(["eager"] + args.variants))
    if args.threads == 1 and "1thread" in args.variants:  # the baseline already runs on one thread
        args.variants.remove("1thread")
    return args


def record(t: float, times: list[float], batch: int, flops: int) -> dict:
    return {"seconds_per_batch_median": t, "seconds_per_batch": times, "images_per_s": batch / t,
            "gflops_per_image": flops / 1e9, "achieved_gflops_per_s": flops * batch / t / 1e9}


def measure(models: dict, inputs: dict, flops: dict, args, device: str, autocast, sync) -> dict:
    """Each model on its own: warm-up, then the median of --runs forwards under inference mode."""
    out = {}
    for name, model in models.items():
        x = inputs[name].to(device)
        model = model.to(device)
        with torch.inference_mode(), autocast():
            t, times = median_seconds(lambda: model(x), args.warmup, args.runs, sync)
        out[name] = record(t, times, args.batch, flops[name])
        print(f"  {device} {name}: {args.batch / t:.2f} images/s (median of {args.runs}: {t:.3f} s per batch "
              f"of {args.batch})", flush=True)
    return out


def student_variant(name: str, model: torch.nn.Module, x: torch.Tensor) -> tuple:
    """(callable forward, grad-mode context factory, compile seconds or None) for a variant; a compile
    variant compiles on its first call, inside this function, cold (inductor's on-disk caches off), so
    that its compile time does not depend on earlier runs."""
    grad = torch.no_grad if name == "no_grad" else torch.inference_mode
    if "channels_last" in name:
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if not name.startswith("compile"):
        return (lambda: model(x)), grad, None
    import torch._inductor.config as inductor_config
    from torch._inductor.utils import clear_inductor_caches
    # freezing goes in through options, not a config patch: a backend with other options fails dynamo's
    # backend guard, so each variant compiles its own code instead of reusing another variant's
    options = {"compile_freezing": {"freezing": True},
               "compile_max_autotune": {"freezing": True, "max_autotune": True}}.get(name)
    compiled = torch.compile(model, options=options)
    clear_inductor_caches()  # in-memory kernel caches: another variant's kernels must not make this one warm
    t0 = time.perf_counter()
    with inductor_config.patch(force_disable_caches=True), grad():
        compiled(x)
    return (lambda: compiled(x)), grad, time.perf_counter() - t0


def time_student_variants(names: list[str], model, x, flops: int, args) -> dict:
    """The variants at the current thread count: each prepared and warmed up, then timed interleaved,
    one batch of each in turn, --student-runs rounds; per variant the median."""
    ready, out = {}, {}
    for name in names:
        try:
            fn, grad, compile_s = student_variant(name, model, x)
            with grad():
                for _ in range(args.warmup):
                    fn()
            ready[name] = (fn, grad)
            out[name] = {"compile_seconds": compile_s} if compile_s is not None else {}
            if compile_s is not None:
                print(f"  student {name}: compiled in {compile_s:.1f} s", flush=True)
        except Exception as e:  # noqa: BLE001 - a variant that fails (torch.compile) is reported, not fatal
            if name in ("eager", "1thread"):
                raise
            msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500]
            out[name] = {"error": msg}
            print(f"  student {name}: FAILED ({msg})", flush=True)
    times = {name: [] for name in ready}
    for _ in range(args.student_runs):
        for name, (fn, grad) in ready.items():
            with grad():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        out[name].update(record(statistics.median(ts), ts, args.batch, flops))
        print(f"  student {name}: {out[name]['images_per_s']:.2f} images/s (median of {len(ts)}: "
              f"{out[name]['seconds_per_batch_median']:.3f} s per batch of {args.batch})", flush=True)
    return out


def cpu_run(nets: dict, inputs: dict, flops: dict, args) -> dict:
    """Probe (before), then per thread count NetVLAD and the student's variants, then probe (after)."""
    groups = {args.threads: [v for v in args.variants if v != "1thread"]}
    if "1thread" in args.variants:
        groups[1] = ["1thread"]
    probes = {t: [] for t in groups}

    def probe(when: str):
        for t in groups:
            torch.set_num_threads(t)
            print(f"CPU peak probe ({when} the models), {t} thread(s)", flush=True)
            probes[t].append(dict(matmul_probe(args.matmul_size, args.matmul_runs, "cpu", label=f"{t}t "),
                                  when=when))

    probe("before")
    groups_out = {}
    for t, names in groups.items():
        torch.set_num_threads(t)
        print(f"CPU, {t} thread(s), batch {args.batch}", flush=True)
        nv_models = {"netvlad": nets["netvlad"]}
        netvlad = measure(nv_models, inputs, flops, args, "cpu", contextlib.nullcontext, lambda: None)["netvlad"]
        netvlad_cl = None
        if args.netvlad_channels_last and t == args.threads:
            cl = {"netvlad": copy.deepcopy(nets["netvlad"]).to(memory_format=torch.channels_last)}
            x_cl = {"netvlad": inputs["netvlad"].contiguous(memory_format=torch.channels_last)}
            netvlad_cl = measure(cl, x_cl, flops, args, "cpu", contextlib.nullcontext, lambda: None)["netvlad"]
        student = time_student_variants(names, nets["student"], inputs["student"], flops["student"], args)
        groups_out[t] = {"netvlad": netvlad, "netvlad_channels_last": netvlad_cl, "student": student}
    if not args.probe_once:
        probe("after")

    out = {"threads": args.threads, "peak_probe": {}, "student_variants": {}, "netvlad": {}}
    for t, g in groups_out.items():
        peak = combine_passes(probes[t])
        timed = [g["netvlad"]] + ([g["netvlad_channels_last"]] if g["netvlad_channels_last"] else []) + \
                [r for r in g["student"].values() if "images_per_s" in r]
        peak.update(apply_peak(timed, peak["gflops_per_s"]))
        out["peak_probe"][str(t)] = peak
        out["netvlad"][str(t)] = g["netvlad"]
        if g["netvlad_channels_last"]:
            out["netvlad_channels_last"] = g["netvlad_channels_last"]
        for name, r in g["student"].items():
            r["threads"] = t
            if "images_per_s" in r:
                r["student_vs_netvlad"] = r["images_per_s"] / g["netvlad"]["images_per_s"]
            out["student_variants"][name] = r
    base = out["student_variants"]["eager"]
    ok = {k: v for k, v in out["student_variants"].items() if "images_per_s" in v}
    best = max(ok, key=lambda k: ok[k]["images_per_s"])
    for v in ok.values():
        v["speedup_vs_eager"] = v["images_per_s"] / base["images_per_s"]
    out["best_variant"] = best
    out["speedup_student_vs_netvlad"] = base["student_vs_netvlad"]  # the baseline, as on earlier pages
    out["speedup_best_variant_vs_netvlad"] = ok[best]["student_vs_netvlad"]
    # the layout of earlier pages: the baseline student and NetVLAD at --threads
    out["models"] = {"student": base, "netvlad": out["netvlad"][str(args.threads)]}
    out["matmul_peak"] = out["peak_probe"][str(args.threads)]
    return out


def gpu_run(nets: dict, inputs: dict, flops: dict, args) -> dict:
    sync = torch.cuda.synchronize
    print(f"GPU {torch.cuda.get_device_name(0)}, batch {args.batch}", flush=True)
    gpu = {"device": torch.cuda.get_device_name(0)}
    modes = [("fp32", torch.float32, contextlib.nullcontext)]
    if args.amp:
        modes.append(("bf16_autocast", torch.bfloat16, lambda: torch.autocast("cuda", dtype=torch.bfloat16)))
    for mode, dtype, autocast in modes:
        before = dict(matmul_probe(args.gpu_matmul_size, args.matmul_runs, "cuda", dtype, sync), when="before")
        r = measure(nets, inputs, flops, args, "cuda", autocast, sync)
        passes = [before]
        if not args.probe_once:
            passes.append(dict(matmul_probe(args.gpu_matmul_size, args.matmul_runs, "cuda", dtype, sync), when="after"))
        peak = combine_passes(passes)
        peak.update(apply_peak(list(r.values()), peak["gflops_per_s"]))
        gpu[mode] = {"matmul_peak": peak, "models": r,
                     "speedup_student_vs_netvlad": r["student"]["images_per_s"] / r["netvlad"]["images_per_s"]}
    return gpu


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    s, (h, w) = args.student_size, args.netvlad_hw
    nets = {"student": build_student(s).eval(), "netvlad": build_netvlad()}
    inputs = {"student": torch.randn(args.batch, 3, s, s), "netvlad": torch.randn(args.batch, 3, h, w)}

    # FLOPs per image (2 x MACs), counted on the meta device; the student's attention through timm's
    # explicit path (FlopCounterMode cannot see the fused kernel) on a copy, timing keeps timm's default
    flops = {}
    counted_student = build_student(s).eval()
    explicit_attention(counted_student)
    flops["student"] = count_flops(counted_student.to("meta"), torch.empty(1, 3, s, s, device="meta"))[0]
    flops["netvlad"] = count_flops(build_netvlad().to("meta"), torch.empty(1, 3, h, w, device="meta"))[0]

    result = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "machine": machine_info(),
              "flops_per_image": flops, "flops_convention": "FLOPs = 2 x multiply-adds (FlopCounterMode)",
              "variants": {k: VARIANTS[k] for k in args.variants}}
    result["cpu"] = cpu = cpu_run(nets, inputs, flops, args)
    torch.set_num_threads(args.threads)
    if torch.cuda.is_available() and not args.no_gpu:
        result["gpu"] = gpu_run(nets, inputs, flops, args)
    if hasattr(os, "getloadavg"):
        result["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return finish(args.out, page(result, args), result)


if __name__ == "__main__":
    main()
