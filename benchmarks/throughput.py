"""Descriptor-extraction throughput, side by side in one run: the student CrossViT-tiny (240) and
NetVLAD-VGG16 (640x480), same batch size and threads; plus this machine's fp32 matmul peak and
the fraction of it each model achieves (FLOPs counted with FlopCounterMode, 2 x multiply-adds).

Each measurement: warm-up forwards, then the median of N timed forwards (inference mode, random
weights and images). On a GPU (when torch.cuda.is_available()) the same is measured with
synchronisation, optionally under bf16 autocast (--amp).

    python benchmarks/throughput.py                    # writes benchmarks/results/throughput.{md,json}
    python benchmarks/throughput.py --runs 10 --threads 16
"""
from __future__ import annotations

import contextlib
import statistics
import time

import torch
from baselines import build_netvlad, count_flops, explicit_attention
from report import finish, machine_info, markdown_table, parser

from models.crossvit import build_student


def parse_args(argv=None):
    p = parser(__doc__, "throughput")
    p.add_argument("--batch", type=int, default=8, help="images per forward, the same for both models")
    p.add_argument("--warmup", type=int, default=1, help="untimed forwards before timing")
    p.add_argument("--runs", type=int, default=3, help="timed forwards; the median is reported")
    p.add_argument("--student-size", type=int, default=240, help="student input size")
    p.add_argument("--netvlad-hw", type=int, nargs=2, default=[480, 640], metavar=("H", "W"),
                   help="NetVLAD input height and width")
    p.add_argument("--matmul-size", type=int, default=2048, help="N of the N x N fp32 matmul used for the CPU peak")
    p.add_argument("--gpu-matmul-size", type=int, default=8192, help="N of the N x N matmul used for the GPU peak")
    p.add_argument("--matmul-runs", type=int, default=5, help="timed matmuls; the median is reported")
    p.add_argument("--amp", action="store_true", help="on GPU, also time both models under bf16 autocast")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU measurements even if CUDA is available")
    return p.parse_args(argv)


def median_seconds(fn, warmup: int, runs: int, sync=lambda: None) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def matmul_peak(n: int, runs: int, device: str, dtype=torch.float32, sync=lambda: None) -> dict:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t, times = median_seconds(lambda: a @ b, 1, runs, sync)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "seconds_median": t, "seconds": times,
            "gflops_per_s": 2 * n ** 3 / t / 1e9}


def measure(models: dict, inputs: dict, flops: dict, args, device: str, autocast, sync) -> dict:
    out = {}
    for name, model in models.items():
        x = inputs[name].to(device)
        model = model.to(device)
        with torch.inference_mode(), autocast():
            t, times = median_seconds(lambda: model(x), args.warmup, args.runs, sync)
        out[name] = {"seconds_per_batch_median": t, "seconds_per_batch": times, "images_per_s": args.batch / t,
                     "gflops_per_image": flops[name] / 1e9, "achieved_gflops_per_s": flops[name] * args.batch / t / 1e9}
        print(f"  {device} {name}: {args.batch / t:.2f} images/s (median of {args.runs}: {t:.3f} s per batch "
              f"of {args.batch})", flush=True)
    return out


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
              "flops_per_image": flops, "flops_convention": "FLOPs = 2 x multiply-adds (FlopCounterMode)"}

    print(f"CPU, {args.threads} threads, batch {args.batch}", flush=True)
    peak = matmul_peak(args.matmul_size, args.matmul_runs, "cpu")
    print(f"  cpu fp32 matmul {args.matmul_size}^3: {peak['gflops_per_s']:.1f} GFLOP/s", flush=True)
    cpu = measure(nets, inputs, flops, args, "cpu", contextlib.nullcontext, lambda: None)
    for r in cpu.values():
        r["fraction_of_matmul_peak"] = r["achieved_gflops_per_s"] / peak["gflops_per_s"]
    result["cpu"] = {"matmul_peak": peak, "models": cpu,
                     "speedup_student_vs_netvlad": cpu["student"]["images_per_s"] / cpu["netvlad"]["images_per_s"]}

    if torch.cuda.is_available() and not args.no_gpu:
        sync = torch.cuda.synchronize
        print(f"GPU {torch.cuda.get_device_name(0)}, batch {args.batch}", flush=True)
        gpu = {"device": torch.cuda.get_device_name(0)}
        gpu["matmul_peak"] = matmul_peak(args.gpu_matmul_size, args.matmul_runs, "cuda", torch.float32, sync)
        modes = [("fp32", contextlib.nullcontext)]
        if args.amp:
            gpu["matmul_peak_bf16"] = matmul_peak(args.gpu_matmul_size, args.matmul_runs, "cuda", torch.bfloat16, sync)
            modes.append(("bf16_autocast", lambda: torch.autocast("cuda", dtype=torch.bfloat16)))
        for mode, autocast in modes:
            r = measure(nets, inputs, flops, args, "cuda", autocast, sync)
            ref = gpu["matmul_peak_bf16" if mode != "fp32" else "matmul_peak"]["gflops_per_s"]
            for v in r.values():
                v["fraction_of_matmul_peak"] = v["achieved_gflops_per_s"] / ref
            gpu[mode] = {"models": r,
                         "speedup_student_vs_netvlad": r["student"]["images_per_s"] / r["netvlad"]["images_per_s"]}
        result["gpu"] = gpu

    rows = []
    sections = [("cpu", f"CPU ({args.threads} threads)", result["cpu"], peak)]
    if "gpu" in result:
        g = result["gpu"]
        sections.append(("gpu", f"GPU fp32 ({g['device']})", g["fp32"], g["matmul_peak"]))
        if "bf16_autocast" in g:
            sections.append(("gpu", f"GPU bf16 autocast ({g['device']})", g["bf16_autocast"], g["matmul_peak_bf16"]))
    for _, label, sec, pk in sections:
        for name, r in sec["models"].items():
            model = f"student CrossViT-tiny {s}x{s}" if name == "student" else f"NetVLAD-VGG16 {w}x{h}"
            rows.append([label, model, args.batch, f"{r['seconds_per_batch_median']:.3f}", f"{r['images_per_s']:.2f}",
                         f"{r['gflops_per_image']:.2f}", f"{r['achieved_gflops_per_s']:.1f}",
                         f"{pk['gflops_per_s']:.1f}", f"{100 * r['fraction_of_matmul_peak']:.1f}%"])
    md = ["# Descriptor-extraction throughput", "",
          f"Machine: {result['machine']['cpu']} ({result['machine']['cpu_count']} logical CPUs), torch "
          f"{torch.__version__}; load average at start {result['machine'].get('load_average_1m_5m_15m')}. "
          f"Warm-up {args.warmup}, median of {args.runs} timed batches; random weights and images. "
          f"GFLOPs are 2 x multiply-adds counted by FlopCounterMode; the peak is an N x N matmul "
          f"(CPU N={args.matmul_size}).", "",
          markdown_table(["device", "model", "batch", "s / batch (median)", "images/s", "GFLOPs / image",
                          "achieved GFLOP/s", "matmul peak GFLOP/s", "of peak"], rows), ""]
    for _, label, sec, _ in sections:
        st, nv = sec["models"]["student"], sec["models"]["netvlad"]
        md.append(f"- {label}: student / NetVLAD throughput ratio **{sec['speedup_student_vs_netvlad']:.1f}x** "
                  f"vs a FLOPs ratio of {flops['netvlad'] / flops['student']:.1f}x; the gap is the efficiency "
                  f"difference: the student runs at {100 * st['fraction_of_matmul_peak']:.0f}% of the matmul peak, "
                  f"NetVLAD's convolutions at {100 * nv['fraction_of_matmul_peak']:.0f}%.")
    if "gpu" not in result:
        md.append("- No GPU measured (CUDA not available" + (" or --no-gpu" if args.no_gpu else "") + ").")
    return finish(args.out, md, result)


if __name__ == "__main__":
    main()
