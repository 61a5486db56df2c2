"""effvit-train's own overhead: images/s of the real training engine vs a bare timm loop.

Both run the same model (built by `build_model`), the same fixed batch and the same timm AdamW:
- engine: `effvit_deploy.train.engine.train_one_epoch` with the trainer `build_trainer` makes
  from a recipe (scheduler updates, Performer redraw hook, loss bookkeeping, progress lines);
- bare: `loss = F.cross_entropy(model(x), y); loss.backward(); opt.step(); opt.zero_grad()`.
Blocks of `--steps` steps alternate (order shuffled per repeat, after a warm-up block each), so
machine noise hits both alike; the ratio per repeat is reported as median and spread. The data
pipeline is excluded on both sides: this measures the toolkit, not image decoding.

    flock /tmp/effvit-bench.lock .venv/bin/python benchmarks/train_overhead.py
"""
from __future__ import annotations

import argparse
import contextlib
import io
import random
import statistics
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2

from effvit_deploy import build_model
from effvit_deploy.atomic import write_json, write_text
from effvit_deploy.train import load_config
from effvit_deploy.train.distributed import DistEnv
from effvit_deploy.environment import environment
from effvit_deploy.train.engine import build_trainer, train_one_epoch
from effvit_deploy.train.metrics import Progress

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 0.05


def machine() -> dict:
    env = environment()
    return {
        "cpu": env["cpu_model"], "cores": env["cpu_cores"], "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "timm": timm.__version__, "commit": env["git_commit"], "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_tiny_patch16_224")
    p.add_argument("--attention", default="exact")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=15, help="optimizer steps per timed block")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_overhead"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    config = load_config(overrides=[
        f"model={args.model}", f"img_size={args.img_size}", f"batch_size={args.batch}", "aug=null",
        "optim.lr=1e-4", "optim.weight_decay=0.05", "sched.warmup_epochs=0", "clip_grad=null", "device=cpu",
        "log_interval=50",
    ], attention=args.attention)
    env = DistEnv()

    def fresh_model():
        torch.manual_seed(0)
        return build_model(args.model, attention=args.attention, num_classes=10, img_size=args.img_size).train()

    net = fresh_model()
    trainer = build_trainer(config, net, env, updates_per_epoch=args.steps)
    bare = fresh_model()
    bare_opt = create_optimizer_v2(bare, opt="adamw", lr=1e-4, weight_decay=0.05)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    y = torch.randint(0, 10, (args.batch,))
    batches = [(x, y, 0)] * args.steps

    def run_engine() -> float:
        progress = Progress(args.steps, "[engine]", enabled=True, log_interval=config["log_interval"], tty=False)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            train_one_epoch(trainer, batches, args.steps, progress)
        return args.steps * args.batch / (time.perf_counter() - start)

    def run_bare() -> float:
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = F.cross_entropy(bare(x), y)
            loss.backward()
            bare_opt.step()
            bare_opt.zero_grad(set_to_none=True)
        return args.steps * args.batch / (time.perf_counter() - start)

    runners = {"engine": run_engine, "bare": run_bare}
    for fn in runners.values():  # warm-up
        fn()
    rng = random.Random(0)
    rows = []
    for repeat in range(args.repeats):
        order = list(runners)
        rng.shuffle(order)
        ips = {name: runners[name]() for name in order}
        rows.append({"repeat": repeat, **ips, "ratio": ips["engine"] / ips["bare"]})
        print(f"repeat {repeat}: engine {ips['engine']:.1f} img/s, bare {ips['bare']:.1f} img/s, ratio {rows[-1]['ratio']:.4f}", flush=True)

    ratios = sorted(r["ratio"] for r in rows)
    q = statistics.quantiles(ratios, n=4)
    median = statistics.median(ratios)
    result = {
        "machine": machine(),
        "settings": {k: getattr(args, k) for k in ("model", "attention", "img_size", "batch", "steps", "repeats", "threads")},
        "engine_images_per_s_median": statistics.median(r["engine"] for r in rows),
        "bare_images_per_s_median": statistics.median(r["bare"] for r in rows),
        "ratio_median": median, "ratio_q1": q[0], "ratio_q3": q[2], "ratio_min": ratios[0], "ratio_max": ratios[-1],
        "overhead_median": 1 - median, "limit": LIMIT, "passed": (1 - median) < LIMIT,
        "repeats": rows,
    }
    out = Path(args.out)
    write_json(out.with_suffix(".json"), result)
    m, s = result["machine"], result["settings"]
    lines = [
        "# effvit-train overhead vs a bare timm loop",
        "",
        f"Generated by `benchmarks/train_overhead.py` on {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch "
        f"thread(s)), torch {m['torch']}, timm {m['timm']}, commit {m['commit']}, {m['date_utc']} UTC.",
        "",
        f"Model {s['model']} ({s['attention']} attention) at {s['img_size']} px, batch {s['batch']}, "
        f"{s['steps']} optimizer steps per timed block, {s['repeats']} interleaved repeats after one warm-up "
        "block each. Same model, batch and timm AdamW on both sides; data loading excluded.",
        "",
        "| | images/s (median) |",
        "|---|---|",
        f"| effvit-train engine (`train_one_epoch`) | {result['engine_images_per_s_median']:.1f} |",
        f"| bare timm forward/backward/step | {result['bare_images_per_s_median']:.1f} |",
        "",
        f"Engine / bare throughput ratio: median **{median:.4f}**, quartiles {q[0]:.4f} to {q[2]:.4f}, "
        f"range {ratios[0]:.4f} to {ratios[-1]:.4f}.",
        f"Overhead (1 - median ratio): **{100 * (1 - median):.2f}%** (limit {100 * LIMIT:.0f}%): "
        f"{'PASS' if result['passed'] else 'FAIL'}.",
        "",
        "| repeat | engine img/s | bare img/s | ratio |",
        "|---|---|---|---|",
        *[f"| {r['repeat']} | {r['engine']:.1f} | {r['bare']:.1f} | {r['ratio']:.4f} |" for r in rows],
        "",
    ]
    write_text(out.with_suffix(".md"), "\n".join(lines))
    print(f"overhead {100 * (1 - median):.2f}% -> {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
