"""Layer latency of the Nystrom, Performer and atrous attention layers, before and after a change.

One attention layer of ViT-S/16's shape (dim 384, 6 heads) runs a forward pass on one image's
tokens (1 class token + an H x W patch grid: 1,025 / 4,097 / 16,385 tokens). "before" is the
library at an older commit (a checkout passed as --before-tree, e.g.
`git worktree add --detach /tmp/h11-before 07f4a64`), "after" this checkout. Every
version is measured in its own process, importing `effvit_deploy` from its
tree: one worker process per version, which never run at the same time, so they share no
thread pool; rounds alternate before/after in shuffled order so machine drift hits both alike. Reported: per-round median latency, its spread (min-max over
rounds), and the after/before ratio of round medians taken in the same run.

    flock /tmp/effvit-timing.lock python benchmarks/attention_latency_before_after.py \\
        --before-tree /tmp/h11-before --before-label 07f4a64
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIM, HEADS = 384, 6

# (label, mechanism, kwargs, versions it runs on)
CONFIGS = [
    ("nystrom(landmarks=64)", "nystrom", {"landmarks": 64}, ("before", "after")),
    ("nystrom(landmarks=64, pinv_iterations=16)", "nystrom", {"landmarks": 64, "pinv_iterations": 16}, ("before", "after")),
    ("nystrom(landmarks=128)", "nystrom", {"landmarks": 128}, ("before", "after")),
    ("performer(num_features=256)", "performer", {"num_features": 256}, ("before", "after")),
    ("atrous(window_size=7, dilations=(1, 2, 3))", "atrous", {"window_size": 7, "dilations": [1, 2, 3]}, ("before", "after")),
    ("atrous(window_size=7, dilations=pow2, position_bias=True)", "atrous",
     {"window_size": 7, "dilations": "pow2", "position_bias": True}, ("after",)),
]


def worker() -> None:
    """Serve timing requests (JSON lines on stdin); answer each with {grid: median seconds per call}."""
    import torch

    from effvit_deploy import ATTENTIONS

    for line in sys.stdin:
        spec = json.loads(line)
        torch.set_num_threads(spec["threads"])
        torch.manual_seed(0)
        layer = ATTENTIONS[spec["attention"]](DIM, HEADS, **spec["kwargs"]).eval()
        # versions up to 0.3.0 read the grid from `layer.grid`; later ones take it as an argument
        takes_grid = "grid" in inspect.signature(layer.forward).parameters
        times = {}
        with torch.inference_mode():
            for side in spec["grids"]:
                layer.grid = (side, side)
                kwargs = {"grid": (side, side)} if takes_grid else {}
                x = torch.randn(1, 1 + side * side, DIM)
                for _ in range(spec["warmup"]):
                    layer(x, **kwargs)
                calls = []
                for _ in range(spec["calls"]):
                    start = time.perf_counter()
                    layer(x, **kwargs)
                    calls.append(time.perf_counter() - start)
                times[str(side)] = statistics.median(calls)
        print(json.dumps(times), flush=True)


def start_worker(tree: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.Popen([sys.executable, __file__, "--worker"], env=env, cwd=tree, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def measure(proc: subprocess.Popen, attention: str, kwargs: dict, args) -> dict[str, float]:
    spec = {"attention": attention, "kwargs": kwargs, "grids": args.grids, "threads": args.threads,
            "warmup": args.warmup, "calls": args.calls}
    proc.stdin.write(json.dumps(spec) + "\n")
    proc.stdin.flush()
    answer = proc.stdout.readline()
    if not answer:
        raise RuntimeError(f"timing worker for {attention} {kwargs} exited (code {proc.wait()})")
    return json.loads(answer)


def render(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Attention layer latency before/after",
        "",
        f"One attention layer, dim {DIM}, {HEADS} heads (ViT-S/16's shape), batch 1, forward only, "
        f"{meta['threads']} torch thread(s), CPU: {meta['cpu']}. before = commit {meta['before']}, "
        f"after = commit {meta['after']}. Median of {meta['rounds']} rounds (each the median of "
        f"{meta['calls']} calls after {meta['warmup']} warm-up calls), spread = min-max over rounds; "
        "ratio = after / before of the round medians, measured in the same run, each version in its "
        f"own process. Load average {meta['load_before']:.1f} before and {meta['load_after']:.1f} after the run "
        f"on {meta['cores']} cores (a load above the core count means other jobs shared the machine). "
        "No GPU was available; these are CPU figures only.",
        f"Command: `{meta['command']}`, {meta['date_utc']} UTC.",
        *(["", meta["note"]] if meta.get("note") else []),
        "",
        "| mechanism | tokens | before ms (spread) | after ms (spread) | after / before |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        cell = lambda v: "-" if v is None else f"{v['median'] * 1e3:.2f} ({v['min'] * 1e3:.2f}-{v['max'] * 1e3:.2f})"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"| {r['mechanism']} | {r['tokens']} | {cell(r['before'])} | {cell(r['after'])} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--before-tree", type=Path, help="a checkout of the 'before' commit")
    parser.add_argument("--before-label", default="", help="how the results name the before commit")
    parser.add_argument("--grids", default="32,64,128", help="patch-grid sides: 32,64,128 = 1,025 / 4,097 / 16,385 tokens")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--note", default="", help="a paragraph for the results header (what changed between the versions)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "attention_latency_before_after.md")
    args = parser.parse_args(argv)
    if args.worker:
        worker()
        return 0
    if args.before_tree is None or not (args.before_tree / "effvit_deploy").is_dir():
        parser.error("--before-tree must be a checkout of the before commit (git worktree add --detach DIR COMMIT)")
    args.grids = [int(g) for g in args.grids.split(",")]

    import torch

    from effvit_deploy.atomic import write_json, write_text
    from effvit_deploy.environment import environment

    load_before = os.getloadavg()[0]
    trees = {"before": args.before_tree.resolve(), "after": ROOT}
    workers = {version: start_worker(tree) for version, tree in trees.items()}
    jobs = [(label, version) for label, _, _, versions in CONFIGS for version in versions]
    samples: dict[tuple[str, str], list[dict]] = {job: [] for job in jobs}
    rng = random.Random(0)
    for round_ in range(args.rounds):
        order = jobs[:]
        rng.shuffle(order)
        for label, version in order:
            _, attention, kwargs, _ = next(c for c in CONFIGS if c[0] == label)
            samples[(label, version)].append(measure(workers[version], attention, kwargs, args))
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    for proc in workers.values():
        proc.stdin.close()
        proc.wait()

    rows = []
    for label, _, _, versions in CONFIGS:
        for side in args.grids:
            stats = {}
            for version in ("before", "after"):
                if version not in versions:
                    stats[version] = None
                    continue
                values = [s[str(side)] for s in samples[(label, version)]]
                stats[version] = {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": values}
            ratio = None
            if stats["before"] and stats["after"]:
                ratio = stats["after"]["median"] / stats["before"]["median"]
            rows.append({"mechanism": label, "tokens": 1 + side * side, **stats, "ratio": ratio})
    env = environment()
    before_commit = subprocess.run(["git", "-C", str(trees["before"]), "rev-parse", "--short", "HEAD"],
                                   capture_output=True, text=True).stdout.strip() or args.before_label
    meta = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "cpu": env["cpu_model"], "threads": args.threads, "before": before_commit, "after": env["git_commit"],
        "rounds": args.rounds, "calls": args.calls, "warmup": args.warmup, "torch": torch.__version__,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "load_before": load_before, "load_after": os.getloadavg()[0], "cores": os.cpu_count(), "note": args.note,
    }
    write_json(args.out.with_suffix(".json"), {"meta": meta, "environment": env, "rows": rows})
    write_text(args.out, render(rows, meta))
    print(render(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
