"""Nystrom design sweep: landmark layout x ridge rule x landmarks x pseudo-inverse iterations,
on the query/key/value activations of trained exact models (the evidence behind the choices in
effvit_deploy/attention/nystrom.py).

    python benchmarks/nystrom_design.py --run runs/cluttered-exact --run runs/digits-exact \
        --resolutions 128,256,512 --images 4

For each run and resolution, every block's q, k, v are captured on validation images and the
Nystrom output (no residual convolution) is compared with exact attention computed in fp64:
relative error ||approx - exact|| / ||exact||, mean over blocks. Layouts: `1d` contiguous
segments of the token sequence with the class token averaged in (the paper, and this project
before 0.3), `2d` the current block means with prefix tokens as extra landmarks. Ridge rules:
`3e-4` (0.2), `0.03` and `2/m` (0.3). Writes OUT.md and OUT.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from effvit_deploy.approximation import attention_qkv, validation_images
from effvit_deploy.atomic import write_json, write_text
from effvit_deploy.attention.nystrom import block_means, iterative_pinv, segment_means
from effvit_deploy.environment import environment
from effvit_deploy.runs import load_run

ITERATIONS = (0, 1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64)
LANDMARKS = (16, 32, 64, 128)
SUMMARY_ITERATIONS = 8
RIDGES = {"3e-4": lambda m: 3e-4, "0.03": lambda m: 0.03, "2/m": lambda m: 2.0 / m}


def landmarks_1d(x: torch.Tensor, m: int, grid, prefix: int) -> torch.Tensor:
    return segment_means(x, min(m, x.shape[-2]))


def landmarks_2d(x: torch.Tensor, m: int, grid, prefix: int) -> torch.Tensor:
    return torch.cat([x[..., :prefix, :], block_means(x[..., prefix:, :], grid, m)], dim=-2)


LAYOUTS = {"1d": landmarks_1d, "2d": landmarks_2d}


@torch.no_grad()
def sweep(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid, prefix: int) -> dict:
    """{(layout, ridge, landmarks, iterations): relative error} for one block's q (scaled), k, v."""
    exact = torch.softmax(q.double() @ k.double().transpose(-1, -2), -1) @ v.double()
    errors = {}
    for layout, pool in LAYOUTS.items():
        for m in LANDMARKS:
            q_land, k_land = pool(q, m, grid, prefix), pool(k, m, grid, prefix)
            kernel_1 = torch.softmax(q @ k_land.transpose(-1, -2), -1)
            kernel_2 = torch.softmax(q_land @ k_land.transpose(-1, -2), -1)
            values = torch.softmax(q_land @ k.transpose(-1, -2), -1) @ v
            for rule, ridge in RIDGES.items():
                for it in ITERATIONS:
                    out = (kernel_1 @ (iterative_pinv(kernel_2, it, ridge(kernel_2.shape[-1])) @ values)).double()
                    errors[(layout, rule, m, it)] = ((out - exact).norm() / exact.norm()).item()
    return errors


def bump(errors: list[float]) -> float:
    """The largest rise of the error from one iteration count to the next (0: non-increasing)."""
    return max(0.0, max(b - a for a, b in zip(errors, errors[1:])))


def render(rows: list[dict], command: str, env: dict) -> str:
    lines = [
        "# Nystrom design sweep on trained activations",
        "",
        f"Command: `{command}` at commit {env.get('git_commit')}, CPU: {env.get('cpu_model')}, torch {torch.__version__}.",
        "Relative error of the attention output vs exact (fp64), mean over blocks and images. Layout `1d`: the",
        "paper's contiguous segments with the class token averaged in (0.1 defaults); `2d`: block means, prefix",
        "tokens as extra landmarks (0.3). `bump`: the largest rise of the mean error from one iteration count",
        f"to the next over {ITERATIONS} (0 = non-increasing). The 0.1 defaults were 1d, ridge none (the",
        "unregularised iteration, not shown: NaN past ~40 iterations), 6 iterations; 0.2 used ridge 3e-4 and",
        "prefix tokens as own landmarks with 1-D segments.",
        "",
    ]
    at = ITERATIONS.index(SUMMARY_ITERATIONS)
    lines += [f"## Summary: error at {SUMMARY_ITERATIONS} iterations (the default), largest rise over iterations",
              "", "| source | tokens | layout | ridge | " + " | ".join(f"m={m}" for m in LANDMARKS) + " | max bump |",
              "|---|---:|---|---|" + "---:|" * (len(LANDMARKS) + 1)]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["source"], r["tokens"], r["layout"], r["ridge"]), []).append(r)
    for (source, tokens, layout, ridge), group in groups.items():
        by_m = {r["landmarks"]: r["errors"] for r in group}
        lines.append(f"| {source} | {tokens} | {layout} | {ridge} | "
                     + " | ".join(f"{by_m[m][at]:.3f}" for m in LANDMARKS)
                     + f" | {max(bump(e) for e in by_m.values()):.3f} |")
    lines.append("")
    for source in dict.fromkeys(r["source"] for r in rows):
        for tokens in sorted({r["tokens"] for r in rows if r["source"] == source}):
            lines += [f"## {source}, {tokens} tokens", "",
                      "| layout | ridge | landmarks | " + " | ".join(f"it {i}" for i in ITERATIONS) + " | bump |",
                      "|---|---|---:|" + "---:|" * (len(ITERATIONS) + 1)]
            for r in rows:
                if r["source"] == source and r["tokens"] == tokens:
                    lines.append(f"| {r['layout']} | {r['ridge']} | {r['landmarks']} | "
                                 + " | ".join(f"{x:.3f}" for x in r["errors"]) + f" | {bump(r['errors']):.3f} |")
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, action="append", default=[], help="an exact-attention run (repeatable)")
    parser.add_argument("--resolutions", default="128,256,512", help="comma-separated square sizes")
    parser.add_argument("--images", type=int, default=4, help="validation images per resolution")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/nystrom_design.md"))
    parser.add_argument("--render", action="store_true", help="only redraw OUT.md from OUT.json")
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads(args.out.with_suffix(".json").read_text())
        write_text(args.out, render(saved["rows"], saved["command"], saved["environment"]))
        print(f"wrote {args.out}")
        return 0
    if not args.run:
        parser.error("pass at least one --run (or --render)")
    torch.manual_seed(0)
    rows = []
    for run in args.run:
        model, card = load_run(run)
        if card.attention != "exact":
            parser.error(f"{run} uses {card.attention} attention; the sweep needs an exact run")
        for resolution in (int(r) for r in args.resolutions.split(",")):
            per_block = attention_qkv(model, validation_images(card.data, card, resolution, args.images))
            sums: dict = {}
            for (q, k, v, grid, prefix), block in zip(per_block, model.blocks):
                for key, error in sweep(q * block.attn.scale, k, v, grid, prefix).items():
                    sums[key] = sums.get(key, 0.0) + error / len(per_block)
            tokens = q.shape[-2]
            for layout in LAYOUTS:
                for rule in RIDGES:
                    for m in LANDMARKS:
                        rows.append({"source": f"{run.name} ({card.data.get('name')})", "resolution": resolution,
                                     "tokens": tokens, "layout": layout, "ridge": rule, "landmarks": m,
                                     "iterations": list(ITERATIONS),
                                     "errors": [sums[(layout, rule, m, it)] for it in ITERATIONS]})
            print(f"{run.name} {resolution}px ({tokens} tokens) done", flush=True)
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    env = environment()
    write_json(args.out.with_suffix(".json"), {"command": command, "environment": env, "rows": rows})
    write_text(args.out, render(rows, command, env))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
