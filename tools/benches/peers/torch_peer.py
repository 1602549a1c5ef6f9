#!/usr/bin/env python3
"""PyTorch peer of `fusedrop bench`: the same layer, shapes, CSV columns and timing per figure.

Its figures are timed one after another, not interleaved as fusedrop's are.

Times, on the GPU it runs on, with CUDA events:
  - gemm_floor: F.linear(x, w) without bias (PyTorch's own matrix product, no epilogue);
  - eager:      F.dropout(F.relu(F.linear(x, w, b)), p)
  - compile:    torch.compile of the same function (mode "default", dynamic=False),
for pass "forward" and pass "forward+backward" (torch.autograd.grad of the output with respect
to x, w and b, given a random dY). Inputs rotate among sets that together hold at least four
times the L2 size, and are random with no zeros (magnitudes in [0.5, 1), random signs). The
floors of the run (device copy bandwidth, matrix rate) are measured first, as fusedrop does.

Usage:
  python3 torch_peer.py [--quick] [--csv PATH] [--shapes up,sq] [--dtypes bf16,f32] [--p 0.1]
                        [--budget-s SECONDS] [--no-compile]

Exit codes: 0 every figure measured, 1 some figure not measured, 2 bad arguments,
3 no CUDA GPU (or no PyTorch).
"""

import argparse
import csv
import math
import os
import sys
import time

# name, M, K, N, f32 in the suite (docs/PERF.md, targets.md)
SUITE = [
    ("up", 8192, 4096, 16384, False),
    ("down", 8192, 16384, 4096, False),
    ("sq", 4096, 4096, 4096, True),
    ("small", 64, 4096, 4096, True),
    ("wide", 32768, 256, 1024, False),
    ("odd", 1000, 1000, 1000, True),
]
P_VALUES = [0.1, 0.0, 0.5]
QUICK_SHAPES = ["up", "sq", "small", "wide", "odd"]
QUICK_DTYPES = ["bf16", "f32"]
COLUMNS = [
    "source", "gpu", "driver", "shape", "m", "n", "k", "dtype", "p", "pass", "impl", "time_us",
    "fastest_us", "slowest_us", "tflops", "gbps", "vs_gemm_floor", "vs_unfused", "pct_copy_bw",
    "pct_matmul_rate", "copy_gbps", "rate_tflops", "note",
]


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="bf16 on up, sq, small, wide, odd and f32 on sq, small, odd; p=0.1; "
                         "short timing")
    ap.add_argument("--csv", help="write the rows to this CSV file")
    ap.add_argument("--shapes", help="comma-separated shape names")
    ap.add_argument("--dtypes", help="comma-separated from bf16,f16,f32")
    ap.add_argument("--p", help="comma-separated dropout probabilities")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="stop compiling new torch.compile variants after this many seconds "
                         "(default: 200 with --quick, unlimited otherwise)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--device", type=int, default=0)
    args = ap.parse_args(argv)
    names = [s[0] for s in SUITE]
    shapes = args.shapes.split(",") if args.shapes else (QUICK_SHAPES if args.quick else names)
    for s in shapes:
        if s not in names:
            ap.error(f"unknown shape {s!r}; expected one of {', '.join(names)}")
    dtypes = args.dtypes.split(",") if args.dtypes else (
        QUICK_DTYPES if args.quick else ["bf16", "f16", "f32"])
    for d in dtypes:
        if d not in ("bf16", "f16", "f32"):
            ap.error(f"unknown dtype {d!r}; expected bf16, f16 or f32")
    try:
        ps = [float(v) for v in args.p.split(",")] if args.p else ([0.1] if args.quick else P_VALUES)
    except ValueError:
        ap.error("--p takes comma-separated numbers")
    if any(not 0.0 <= p <= 1.0 for p in ps):
        ap.error("--p values must lie in [0, 1]")
    # A value named twice would be measured twice, and `fusedrop goals` refuses a row twice.
    for flag, values in (("--shapes", shapes), ("--dtypes", dtypes), ("--p", ps)):
        if len(set(values)) != len(values):
            ap.error(f"{flag} names a value twice; expected each at most once")
    # Refused before any GPU time is spent, as `fusedrop bench --csv` refuses it.
    if args.csv:
        folder = os.path.dirname(args.csv)
        if folder and not os.path.isdir(folder):
            ap.error(f"the folder of the CSV file {args.csv} does not exist")
        if os.path.isdir(args.csv):
            ap.error(f"the CSV file {args.csv} is a folder; expected a file name")
    if args.budget_s is None and args.quick:
        args.budget_s = 200.0
    args.shape_list, args.dtype_list, args.p_list = shapes, dtypes, ps
    return args


def driver_version(torch):
    try:
        with open("/proc/driver/nvidia/version") as f:
            for tok in f.readline().split():
                if "." in tok and all(c.isdigit() or c == "." for c in tok):
                    return tok
    except OSError:
        pass
    # As `fusedrop bench` writes it there: the driver API's CUDA version (not the CUDA that
    # PyTorch was built with), so that `fusedrop goals` sees one driver in both CSVs.
    try:
        import ctypes
        version = ctypes.c_int()
        if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version)) == 0:
            return f"CUDA {version.value // 1000}.{version.value % 1000 // 10}"
    except (OSError, AttributeError):
        pass
    return "unknown"


class Timer:
    """GPU time per call over repetitions timed by CUDA events, as fusedrop measures: the median
    repetition's, the fastest's and the slowest's (the goals' "faster" needs the range)."""

    def __init__(self, torch, quick):
        self.torch = torch
        self.warmup, self.reps, self.rep_s = (3, 5, 0.005) if quick else (5, 15, 0.020)

    def events(self, fn, count, start_index):
        torch = self.torch
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(count):
            fn(start_index + i)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    def measure(self, fn):
        index = 0
        for _ in range(self.warmup):
            fn(index)
            index += 1
        probe = self.events(fn, 3, index) / 3
        index += 3
        launches = int(min(2000, max(1, math.ceil(self.rep_s / max(probe, 1e-7)))))
        times = []
        for _ in range(self.reps):
            times.append(self.events(fn, launches, index) / launches)
            index += launches
        times.sort()
        return times[len(times) // 2], times[0], times[-1]


def random_nonzero(torch, shape, dtype, gen):
    mag = torch.rand(shape, device="cuda", generator=gen) * 0.5 + 0.5
    sign = torch.randint(0, 2, shape, device="cuda", generator=gen) * 2 - 1
    return (mag * sign).to(dtype)


def main(argv):
    args = parse_args(argv)
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(f"torch_peer: PyTorch is not installed: {e}", file=sys.stderr)
        return 3
    if not torch.cuda.is_available():
        print("torch_peer: no CUDA GPU visible to PyTorch", file=sys.stderr)
        return 3
    torch.cuda.set_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # true fp32, as the f32 rows of fusedrop
    torch.backends.cudnn.allow_tf32 = False
    # f16 and bf16 products accumulate in f32 to the end, as fusedrop's and cuBLASLt's rows do
    # (PyTorch otherwise lets cuBLAS reduce split-K partial sums in 16 bits).
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    try:
        import torch._dynamo
        torch._dynamo.config.cache_size_limit = 256
    except Exception:  # older or newer PyTorch without this knob: compiling still works
        pass
    props = torch.cuda.get_device_properties(args.device)
    gpu = props.name
    driver = driver_version(torch)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    timer = Timer(torch, args.quick)
    dtypes = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
    size = {"bf16": 2, "f16": 2, "f32": 4}
    gen = torch.Generator(device="cuda")
    gen.manual_seed(1234)
    started = time.time()
    failures = []

    # Floors of this run.
    nbytes = max(256 << 20, min(16 * l2, 1 << 30))
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device="cuda", generator=gen)
    dst = torch.empty_like(src)
    copy_gbps = 2 * nbytes / timer.measure(lambda i: dst.copy_(src))[0] / 1e9
    del src, dst
    rates = {}
    for d in args.dtype_list:
        n = 4096 if d == "f32" else 8192
        a = random_nonzero(torch, (n, n), dtypes[d], gen)
        b = random_nonzero(torch, (n, n), dtypes[d], gen)
        rates[d] = 2 * n ** 3 / timer.measure(lambda i: torch.mm(a, b))[0] / 1e12
        del a, b
    print(f"GPU: {gpu}, driver {driver}, torch {torch.__version__}")
    print(f"Floors measured in this run: copy {copy_gbps:.0f} GB/s (read+write); torch.mm " +
          ", ".join(f"{d} {r:.1f} TFLOP/s" for d, r in rates.items()))

    rows = []

    def layer(p):
        def f(x, w, b):
            return F.dropout(F.relu(F.linear(x, w, b)), p, training=True)
        return f

    def gemm(x, w, b):
        return F.linear(x, w)

    for name, m, k, n, with_f32 in SUITE:
        if name not in args.shape_list:
            continue
        for d in args.dtype_list:
            if d == "f32" and not with_f32:
                continue
            dt = dtypes[d]
            es = size[d]
            touched = (m * k + n * k + n + m * n) * es
            count = max(2, min(32, math.ceil(4 * l2 / touched)))
            free, _ = torch.cuda.mem_get_info()
            per_set = (2 * m * k + 2 * n * k + 2 * n + 3 * m * n) * es
            count = min(count, max(2, (free // 2) // per_set))
            sets = []
            for _ in range(count):
                sets.append(tuple(
                    random_nonzero(torch, s, dt, gen).requires_grad_(True)
                    for s in ((m, k), (n, k), (n,))) + (random_nonzero(torch, (m, n), dt, gen),))
            fwd_flops, bwd_flops = 2.0 * m * n * k, 4.0 * m * n * k
            fwd_bytes = (m * k + n * k + n + m * n) * es
            bwd_bytes = (2 * m * k + 2 * n * k + 2 * m * n + n) * es

            def run_fwd(fn):
                def call(i):
                    x, w, b, _ = sets[i % count]
                    with torch.no_grad():
                        fn(x, w, b)
                return call

            def run_fwd_bwd(fn):
                def call(i):
                    x, w, b, dy = sets[i % count]
                    y = fn(x, w, b)
                    torch.autograd.grad(y, (x, w) if fn is gemm else (x, w, b), dy)
                return call

            for pass_name, runner, flops, nbytes_pass in (
                ("forward", run_fwd, fwd_flops, fwd_bytes),
                ("forward+backward", run_fwd_bwd, fwd_flops + bwd_flops, fwd_bytes + bwd_bytes),
            ):
                def timed(label, fn):
                    try:
                        return tuple(t * 1e6 for t in timer.measure(runner(fn)))
                    except Exception as e:  # report and go on: one row must not sink the table
                        failures.append(f"{name} {d} {pass_name} {label}: {type(e).__name__}: {e}")
                        return None

                floor = timed("gemm_floor", gemm)
                per_p = []
                for p in args.p_list:
                    eager = timed(f"eager p={p}", layer(p))
                    compiled = None
                    if args.no_compile:
                        pass
                    elif args.budget_s is not None and time.time() - started > args.budget_s:
                        failures.append(f"{name} {d} {pass_name} compile p={p}: skipped, "
                                        f"--budget-s {args.budget_s:.0f} s spent")
                    else:
                        compiled = timed(f"compile p={p}", torch.compile(layer(p), dynamic=False))
                    per_p.append((p, eager, compiled))

                def row(impl, p, figure, note=""):
                    t, fastest, slowest = figure
                    unfused = next((e for q, e, _ in per_p if q == p), None) if p is not None \
                        else (per_p[0][1] if per_p else None)
                    tflops = flops / t / 1e6
                    gbps = nbytes_pass / t / 1e3
                    r = {
                        "source": "torch", "gpu": gpu, "driver": driver, "shape": name,
                        "m": m, "n": n, "k": k, "dtype": d, "p": "" if p is None else p,
                        "pass": pass_name, "impl": impl, "time_us": f"{t:.2f}",
                        "fastest_us": f"{fastest:.2f}", "slowest_us": f"{slowest:.2f}",
                        "tflops": f"{tflops:.2f}", "gbps": f"{gbps:.1f}",
                        "vs_gemm_floor": f"{t / floor[0]:.3f}" if floor else "",
                        "vs_unfused": f"{t / unfused[0]:.3f}" if unfused else "",
                        "pct_copy_bw": f"{100 * gbps / copy_gbps:.1f}",
                        "pct_matmul_rate": f"{100 * tflops / rates[d]:.1f}",
                        "copy_gbps": f"{copy_gbps:.1f}", "rate_tflops": f"{rates[d]:.1f}",
                        "note": note,
                    }
                    rows.append(r)
                    print(f"  {name:<6} {d:<5} p={r['p']!s:<4} {pass_name:<16} {impl:<10} "
                          f"{t:>10.1f} us {tflops:>8.1f} TFLOP/s {gbps:>8.0f} GB/s "
                          f"x{r['vs_gemm_floor'] or '-':>6} floor  x{r['vs_unfused'] or '-':>6} eager",
                          flush=True)

                if floor:
                    row("gemm_floor", None, floor, "F.linear without bias: PyTorch's product alone")
                for p, eager, compiled in per_p:
                    if eager:
                        row("eager", p, eager, "F.dropout(F.relu(F.linear(x, w, b)), p)")
                    if compiled:
                        row("compile", p, compiled, "torch.compile, mode default, dynamic=False")
            del sets
            torch.cuda.empty_cache()

    for f in failures:
        print(f"NOT MEASURED: {f}")
    print(f"({len(rows)} rows in {time.time() - started:.0f} s)")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
        print(f"CSV written to {args.csv}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
