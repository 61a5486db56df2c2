"""Approximation-error table on the captured q/k/v of the trained exact ViT (tests/data), before
and after a change of the attention modules, in fp32 and under bf16 / fp16 autocast.

For a trained run, benchmarks/approximation_error.py measures every block on fresh validation
images; this script needs no run: it reads tests/data/cluttered_qkv.safetensors (blocks 0 and 3
of the study's exact model at 257 and 1,025 tokens, tests/data/README.md) and gives each
mechanism exactly what a layer's `attend` receives. Error: ||out - exact|| / ||exact|| with
exact attention in float64, mean over the captured blocks.

    git worktree add --detach /tmp/before 3dad674
    python benchmarks/approximation_error_captured.py --before /tmp/before \
        --out benchmarks/results/approximation_error_captured.md
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from effvit_deploy.approximation import default_mechanisms
from effvit_deploy.attention import ATTENTIONS

DATA = Path(__file__).parents[1] / "tests" / "data" / "cluttered_qkv.safetensors"
TRAIN_GRID = (16, 16)  # the model's patch grid at its 128 px training size (patch 8)
GRIDS = {"128": (16, 16), "256": (32, 32)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _other_attentions(tree: Path) -> dict:
    spec = importlib.util.spec_from_file_location("approximation_error", Path(__file__).parent / "approximation_error.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.other_attentions(tree)


def errors(attentions: dict, mechanism, tensors: dict, dtypes: list[str]) -> dict:
    """{dtype: {tokens: mean error over the captured blocks}} for one mechanism."""
    cls = attentions[mechanism.attention]
    kwargs = dict(mechanism.kwargs)
    if "grid_size" in inspect.signature(cls.__init__).parameters:
        kwargs["grid_size"] = TRAIN_GRID
    torch.manual_seed(0)
    layer = cls(96, 3, **kwargs).eval()
    table: dict = {d: {} for d in dtypes}
    for res, grid in GRIDS.items():
        per_block = {d: [] for d in dtypes}
        for block in ("0", "3"):
            q, k, v = (tensors[f"{res}/{block}/{n}"].float() for n in "qkv")
            ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
            for d in dtypes:
                with torch.no_grad(), torch.autocast("cpu", dtype=DTYPES[d], enabled=d != "fp32"):
                    out = layer.attend(*(t.to(DTYPES[d]) for t in (q, k, v)), grid)
                per_block[d].append(((out.double() - ref).norm() / ref.norm()).item())
        for d in dtypes:
            table[d][str(1 + grid[0] * grid[1])] = sum(per_block[d]) / len(per_block[d])
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="a checkout whose attention modules are 'before'")
    parser.add_argument("--out", type=Path, required=True, help="results .md (a .json is written beside it)")
    args = parser.parse_args(argv)
    from safetensors.torch import load_file

    tensors = load_file(str(DATA))
    before = _other_attentions(args.before)
    mechanisms = [m for m in default_mechanisms(TRAIN_GRID[0]) if m.attention in ("performer", "nystrom", "atrous")]
    rows = []
    for mechanism in mechanisms:
        rows.append({"mechanism": mechanism.label,
                     "before": errors(before, mechanism, tensors, ["fp32"])["fp32"],
                     "after": errors(ATTENTIONS, mechanism, tensors, list(DTYPES))})
        print(mechanism.label, rows[-1], flush=True)
    sha = lambda tree: subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "effvit_deploy"], capture_output=True, text=True).stdout.strip()
    record = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
              "before_commit": sha(args.before), "after_commit": sha(".") + ("-dirty" if dirty else ""),
              "machine": f"{platform.machine()}, torch {torch.__version__}", "rows": rows}
    tokens = [str(1 + g[0] * g[1]) for g in GRIDS.values()]
    lines = [
        "# Approximation error on the trained model's captured q/k/v, before and after", "",
        "Mean relative error ||approx - exact|| / ||exact|| (exact attention in float64) over blocks 0 and 3 of the",
        "study's trained exact model (tests/data/cluttered_qkv.safetensors; the trained run itself is not on this",
        f"machine). Before: {record['before_commit']}; after: {record['after_commit']}. Command: `{record['command']}`;",
        f"{record['machine']}. bf16 / fp16: the after modules under CPU autocast, q/k/v cast to that dtype.", "",
        "| mechanism | " + " | ".join(f"{t} tok fp32 before | after | change" for t in tokens)
        + " | " + " | ".join(f"{t} tok bf16 | fp16" for t in tokens) + " |",
        "|---|" + "---:|" * (5 * len(tokens)) + "",
    ]
    for row in rows:
        cells = []
        for t in tokens:
            b, a = row["before"][t], row["after"]["fp32"][t]
            cells += [f"{b:.4f}", f"{a:.4f}", f"{(a - b) / b * 100:+.1f}%"]
        cells += [f"{row['after'][d][t]:.4f}" for t in tokens for d in ("bf16", "fp16")]
        lines.append(f"| {row['mechanism']} | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((args.out, "\n".join(lines) + "\n"), (args.out.with_suffix(".json"), json.dumps(record, indent=2) + "\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
