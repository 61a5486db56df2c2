"""Approximation-error table on the captured q/k/v of the study's trained exact ViT (tests/data),
before and after a change of the attention modules, in fp32 and under bf16 / fp16 autocast.

For a trained run, benchmarks/approximation_error.py measures every block on fresh validation
images; this script needs no run: it reads tests/data/cluttered_qkv.safetensors (the blocks and
resolutions it holds, tests/data/README.md) and gives each mechanism exactly what a layer's
`attend` receives, at the budgets of the study's table (`default_mechanisms` on the capture's
training grid) plus exact attention itself (the rounding floor of each precision). Error:
||out - exact|| / ||exact|| with exact attention in float64, mean over the captured blocks; the
before and after modules are built with the same seed and measured in the same process.

    git worktree add --detach /tmp/wt19-before 3dad674   # once: the modules before issue 19
    python benchmarks/approximation_error_captured.py --before /tmp/wt19-before \
        --out benchmarks/results/approximation_error_captured.md
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F

from effvit_deploy.approximation import Mechanism, default_mechanisms
from effvit_deploy.atomic import write_json, write_text
from effvit_deploy.attention import ATTENTIONS
from effvit_deploy.bench.markdown import md_table
from effvit_deploy.environment import environment

DATA = Path(__file__).parents[1] / "tests" / "data" / "cluttered_qkv.safetensors"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _other_attentions(tree: Path) -> dict:
    spec = importlib.util.spec_from_file_location("approximation_error", Path(__file__).parent / "approximation_error.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.other_attentions(tree)


def load_capture(path: Path) -> tuple[dict, dict]:
    """({(resolution, block): (q, k, v) float32 [images, heads, N, head_dim]}, metadata with the
    patch grid per resolution and the training grid decoded).

    Raises:
        SystemExit: the file lacks the training grid (made before it was recorded): recapture.
    """
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    if "train_grid" not in metadata:
        raise SystemExit(f"{path} has no train_grid in its metadata: recapture it with benchmarks/capture_qkv.py")
    grids = {res: tuple(g["grid"]) for res, g in json.loads(metadata["grids"]).items()}
    captured = {}
    for key in sorted({k.rsplit("/", 1)[0] for k in tensors}, key=lambda k: tuple(map(int, k.split("/")))):
        res, block = key.split("/")
        captured[(res, block)] = tuple(tensors[f"{key}/{n}"].float() for n in "qkv")
    return captured, {**metadata, "grids": grids, "train_grid": tuple(json.loads(metadata["train_grid"]))}


def errors(attentions: Mapping[str, type], mechanism: Mechanism, captured: dict, meta: dict) -> dict:
    """{dtype: {tokens: {"mean": error, "blocks": [error per captured block]}}} for one mechanism
    built from `attentions`, under each dtype of `DTYPES` (autocast for bf16 / fp16, q/k/v cast)."""
    cls = attentions[mechanism.attention]
    kwargs = dict(mechanism.kwargs)
    if "grid_size" in inspect.signature(cls.__init__).parameters:
        kwargs["grid_size"] = meta["train_grid"]
    _, heads, _, head_dim = next(iter(captured.values()))[0].shape
    torch.manual_seed(0)
    layer = cls(heads * head_dim, heads, **kwargs).eval()
    table: dict = {d: {} for d in DTYPES}
    for (res, _), (q, k, v) in captured.items():
        grid = meta["grids"][res]
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
        for name, dtype in DTYPES.items():
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                out = layer.attend(q.to(dtype), k.to(dtype), v.to(dtype), grid)
            error = ((out.double() - ref).norm() / ref.norm()).item()
            table[name].setdefault(str(q.shape[-2]), {"blocks": []})["blocks"].append(error)
    for by_tokens in table.values():
        for cell in by_tokens.values():
            cell["mean"] = sum(cell["blocks"]) / len(cell["blocks"])
    return table


def _commit(tree: Path) -> str:
    sha = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "effvit_deploy"],
                           capture_output=True, text=True).stdout.strip()
    return sha + ("-dirty" if dirty else "")


def render(record: dict) -> str:
    tokens = list(record["rows"][0]["after"]["fp32"])
    body = []
    for row in record["rows"]:
        for dtype in DTYPES:
            cells = []
            for t in tokens:
                b, a = row["before"][dtype][t]["mean"], row["after"][dtype][t]["mean"]
                cells += [f"{b:.4f}", f"{a:.4f}", f"{(a - b) / b * 100:+.1f}%" if b > 1e-3 else "(floor)"]
            body.append([row["mechanism"], dtype, *cells])
    header = ["mechanism", "dtype", *(c for t in tokens for c in (f"{t} tok before", "after", "change"))]
    meta = record["capture"]
    return "\n".join([
        "# Approximation error on the trained model's captured q/k/v, before and after", "",
        "Mean relative error ||approx - exact|| / ||exact|| (exact attention in float64 on the same q/k/v) over blocks",
        f"{', '.join(meta['blocks'])} of the study's trained exact model ({meta['run']}, {meta['model']}, one validation",
        f"image; tests/data/cluttered_qkv.safetensors, captured at commit {meta['commit']}), at the study table's",
        f"budgets for its {meta['train_grid'][0]}x{meta['train_grid'][1]} training grid. fp32: the modules as called in fp32; bf16 / fp16: under CPU",
        "autocast to that dtype with q/k/v cast to it. exact: exact attention itself, the floor the dtype's rounding",
        "sets. change: (after - before) / before; (floor) where before is below 1e-3 (an exact limit: rounding only).",
        f"Before: {record['before_commit']}; after: {record['after_commit']}. Command: `{record['command']}`;",
        f"{record['machine']}.", "",
        *md_table(header, body),
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="a checkout whose attention modules are 'before'")
    parser.add_argument("--out", type=Path, required=True, help="results .md (a .json is written beside it)")
    parser.add_argument("--data", type=Path, default=DATA, help="captured q/k/v (benchmarks/capture_qkv.py)")
    args = parser.parse_args(argv)
    captured, meta = load_capture(args.data)
    before = _other_attentions(args.before)
    mechanisms = [Mechanism("exact"), *default_mechanisms(meta["train_grid"][0])]
    rows = []
    for mechanism in mechanisms:
        rows.append({"mechanism": mechanism.label, "before": errors(before, mechanism, captured, meta),
                     "after": errors(ATTENTIONS, mechanism, captured, meta)})
        print(mechanism.label, {d: {t: round(c["mean"], 4) for t, c in by.items()} for d, by in rows[-1]["after"].items()},
              flush=True)
    env = environment()
    capture = {"run": meta.get("run"), "model": meta.get("model"), "commit": meta.get("commit"),
               "train_grid": list(meta["train_grid"]), "blocks": sorted({b for _, b in captured}, key=int),
               "tokens": sorted({q.shape[-2] for q, _, _ in captured.values()}), "file": str(args.data)}
    record = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
              "before_commit": _commit(args.before), "after_commit": _commit(Path(__file__).parents[1]),
              "machine": f"{env.get('cpu_model')}, torch {torch.__version__}", "capture": capture,
              "environment": env, "rows": rows}
    write_json(args.out.with_suffix(".json"), record)
    write_text(args.out, render(record))
    print(render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
