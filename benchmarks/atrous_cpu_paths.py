"""Where each of atrous attention's two execution paths is fast on the CPU.

AtrousAttention runs FlexAttention on CUDA and the window partition everywhere else
(`effvit_deploy.attention.atrous.use_flex`). This measures that choice on the CPU: one forward
of an atrous ViT-S/16 (default windows 7, dilations 1, 2, 3) through

- window: the window partition, eager (the `torch` backend);
- window, compiled: the same through `torch.compile(dynamic=True)` (the `torch-compile` backend);
- flex: FlexAttention forced on (the CUDA path's code), eager: PyTorch's dense masked fallback;
- flex, compiled: the same through `torch.compile`, inductor's CPU FlexAttention template;
- bound: the attention-free model (attention replaced by v), eager and compiled, to read each
  path against the fastest any mechanism could be.

Each path runs in its own process, one after another (no shared thread pool); every call is
timed after warm-up calls that include the compile. Reported: median ms per forward, min-max
over the timed calls, and each path over the window path and over the bound of its own mode.

    python benchmarks/atrous_cpu_paths.py --out benchmarks/results/atrous_cpu_paths.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_proxies import BOUND, make_model, provenance, write_atomically  # noqa: E402

# label -> (model, FlexAttention forced on, compiled)
PATHS = {
    "window": ("atrous", False, False),
    "window, compiled": ("atrous", False, True),
    "flex": ("atrous", True, False),
    "flex, compiled": ("atrous", True, True),
    "bound": (BOUND, False, False),
    "bound, compiled": (BOUND, False, True),
}


def measure(path: str, px: int, batch: int, depth: int, threads: int, warmup: int, calls: int) -> dict:
    """One path in this process: {"first_call_s", "ms": [per timed call]}."""
    import torch

    from effvit_deploy.attention import atrous

    model_name, force_flex, compiled = PATHS[path]
    torch.set_num_threads(threads)
    if force_flex:
        atrous.use_flex = lambda q: True  # the CUDA path's code, on the CPU
    model = make_model(model_name, depth, px)
    forward = torch.compile(model, dynamic=True) if compiled else model
    x = torch.randn(batch, 3, px, px, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        start = time.perf_counter()
        forward(x)
        first = time.perf_counter() - start
        for _ in range(warmup):
            forward(x)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            forward(x)
            times.append((time.perf_counter() - start) * 1000)
    return {"first_call_s": first, "ms": times}


def render(record: dict) -> str:
    rows = record["results"]
    lines = [
        "# Atrous attention on the CPU: window partition against FlexAttention, eager and compiled",
        "",
        f"{record['setup']}. Commit {record['commit']}; {record['machine']}.",
        "",
        f"Command: `{record['command']}`",
        "",
        "| path | median ms | min-max ms | / window of its mode | / bound of its mode | first call s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for path, row in rows.items():
        compiled = PATHS[path][2]
        window = rows["window, compiled" if compiled else "window"]["median_ms"]
        bound = rows["bound, compiled" if compiled else "bound"]["median_ms"]
        lines.append(f"| {path} | {row['median_ms']:.0f} | {min(row['ms']):.0f}-{max(row['ms']):.0f} | "
                     f"{row['median_ms'] / window:.2f}x | {row['median_ms'] / bound:.2f}x | {row['first_call_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--px", type=int, default=512, help="square input size in px (multiple of 16)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each path's process")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls after the first (compiling) one")
    parser.add_argument("--calls", type=int, default=7, help="timed calls per path")
    parser.add_argument("--out", type=Path, help="results .json (a .md table is written beside it)")
    parser.add_argument("--worker", choices=list(PATHS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.px < 16 or args.px % 16 or min(args.batch, args.depth, args.threads, args.calls) < 1 or args.warmup < 0:
        parser.error("--px: a positive multiple of 16; --batch, --depth, --threads, --calls >= 1; --warmup >= 0")
    sizes = (args.px, args.batch, args.depth, args.threads, args.warmup, args.calls)
    if args.worker:
        print(json.dumps(measure(args.worker, *sizes)))
        return 0
    if args.out is None:
        parser.error("--out is required")
    results = {}
    for path in PATHS:  # each worker gets this call's own options (its --out is not used there)
        command = [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv), "--worker", path]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            sys.stderr.write(done.stderr[-3000:])
            print(f"atrous_cpu_paths: {path} failed (exit {done.returncode}; its stderr above)", file=sys.stderr)
            return 1
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["median_ms"] = statistics.median(row["ms"])
        results[path] = row
        print(f"{path}: median {row['median_ms']:.0f} ms, first call {row['first_call_s']:.1f} s", flush=True)
    record = {
        **provenance(argv),
        "setup": (f"ViT-S/16 with atrous attention (window 7, dilations 1, 2, 3), depth {args.depth}, "
                  f"{args.px} px ({(args.px // 16) ** 2 + 1} tokens), batch {args.batch}, fp32, "
                  f"torch.inference_mode(), {args.threads} threads, {args.calls} timed calls after "
                  f"{args.warmup + 1} untimed"),
        "results": results,
    }
    write_atomically(args.out, json.dumps(record, indent=2) + "\n")
    write_atomically(args.out.with_suffix(".md"), render(record))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
