"""What recomputing attention in backward costs and saves in a training step, per mechanism.

Performer, Nystrom and atrous rebuild their largest attention intermediates in backward
(`effvit_deploy.attention.base.recompute_in_backward`) instead of saving them, so that training
at >= 4,096 tokens holds no more than 1.1x exact attention's memory. This measures the price
of that, on and off, for the same model and batch:

- step time: one bf16-autocast forward and backward (no optimizer step; it is the same either
  way), ms, median and range of `--repeats` steps, on and off alternating after one warm-up
  each, so machine noise hits both alike;
- peak memory: the most bytes held by tensors the step allocates
  (`benchmarks/attention_proxies.PeakMemory`), the quantity a caching GPU allocator follows.

"Off" replaces the mechanism's `recompute_in_backward` with a plain call (what the tests in
tests/test_attention_kernels.py compare gradients against). Each (mechanism, size) runs in its
own process.

    python benchmarks/recompute_cost.py --out benchmarks/results/recompute_cost.json
"""
from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from effvit_deploy import build_model
from effvit_deploy.atomic import write_json, write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_proxies import PeakMemory, provenance  # noqa: E402

MECHANISMS = ("performer", "nystrom", "atrous")
SIZES = ((224, 16), (512, 4))  # (px, batch): ViT-S/16 at 197 and 1,025 tokens
MIB = 2**20


def measure(mechanism: str, resolution: int, batch: int, depth: int, repeats: int) -> dict:
    """Step ms (median, min, max) and peak MiB with recompute on and off, and their ratios."""
    module = importlib.import_module(f"effvit_deploy.attention.{mechanism}")
    recompute = module.recompute_in_backward
    modes = {"on": recompute, "off": lambda fn, *args, **_: fn(*args)}
    torch.manual_seed(0)
    model = build_model("vit_small_patch16_224", attention=mechanism, num_classes=100, depth=depth,
                        img_size=resolution).train()
    x = torch.randn(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x).float().sum()
        loss.backward()
        del loss
        model.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {mode: [] for mode in modes}
    peaks: dict[str, float] = {}
    try:
        for mode, fn in modes.items():  # warm-up, then the peak of one step
            module.recompute_in_backward = fn
            step()
            with PeakMemory() as memory:
                step()
            peaks[mode] = memory.peak / MIB
        for _ in range(repeats):
            for mode, fn in modes.items():
                module.recompute_in_backward = fn
                start = time.perf_counter()
                step()
                times[mode].append((time.perf_counter() - start) * 1e3)
    finally:
        module.recompute_in_backward = recompute
    row = {"mechanism": mechanism, "resolution": resolution, "tokens": (resolution // 16) ** 2 + 1, "batch": batch}
    for mode in modes:
        row[f"ms_{mode}"] = statistics.median(times[mode])
        row[f"ms_{mode}_range"] = [min(times[mode]), max(times[mode])]
        row[f"peak_mib_{mode}"] = peaks[mode]
    row["time_on_vs_off"] = row["ms_on"] / row["ms_off"]
    row["peak_on_vs_off"] = peaks["on"] / peaks["off"]
    return row


def _table(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| attention | px (tokens) | batch | step ms on | step ms off | time on / off | peak MiB on | peak MiB off | peak on / off |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        spread = lambda k: f"{r[k]:.0f} [{r[k + '_range'][0]:.0f}-{r[k + '_range'][1]:.0f}]"  # noqa: E731
        lines.append(f"| {r['mechanism']} | {r['resolution']} ({r['tokens']}) | {r['batch']} | {spread('ms_on')} | "
                     f"{spread('ms_off')} | {r['time_on_vs_off']:.3f} | {r['peak_mib_on']:.0f} | {r['peak_mib_off']:.0f} | "
                     f"{r['peak_on_vs_off']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=4, help="ViT-S/16 blocks (default 4)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per mode (default 5)")
    parser.add_argument("--out", type=Path, required=True, help="results .json (a .md table is written beside it)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # "mechanism,px,batch": the child process's job
    args = parser.parse_args(argv)
    if args.one:
        mechanism, px, batch = args.one.split(",")
        args.out.write_text(json.dumps(measure(mechanism, int(px), int(batch), args.depth, args.repeats)))
        return 0
    rows = []
    for mechanism in MECHANISMS:
        for px, batch in SIZES:
            part = args.out.with_suffix(f".{mechanism}-{px}.part")
            subprocess.run([sys.executable, __file__, "--one", f"{mechanism},{px},{batch}", "--depth", str(args.depth),
                            "--repeats", str(args.repeats), "--out", str(part)], check=True)
            rows.append(json.loads(part.read_text()))
            part.unlink()
    record = provenance(argv)
    record["machine"] += f", {torch.get_num_threads()} threads"
    write_json(args.out, {**record, "depth": args.depth, "repeats": args.repeats, "rows": rows})
    header = (f"# Recompute in backward: training-step cost and memory saved ({record['commit'][:7]})\n\n"
              f"ViT-S/16, depth {args.depth}, bf16 autocast on CPU, one forward + backward, median [min-max] of "
              f"{args.repeats} steps per mode, on and off alternating in one process per row; {record['machine']}.\n\n"
              f"Command: `{record['command']}`")
    write_text(args.out.with_suffix(".md"), _table(rows, header))
    print(_table(rows, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
