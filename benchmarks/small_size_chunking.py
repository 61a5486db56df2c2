"""What chunking would cost to bring Performer's and Nystrom's inference peak down to exact
attention's below 224 px, where it is above it (benchmarks/results/inference_peak_sweep.md).

Below ~224 px (ViT-S/16, under ~200 tokens) the tensors on the other side of these mechanisms
outweigh the token-side ones: Performer's [B, heads, num_features, width] feature-side tensors,
Nystrom's fp32 [B * heads, m, 2m] pseudo-inverse iterates. The only way to hold fewer of them at
once is to split the batch (or the heads) into chunks, each running the same kernels. This
script measures that design without shipping it: it wraps each mechanism's unit of work
(`PerformerAttention._favor`, the whole FAVOR+ estimator; `NystromAttention._landmark_inverse`,
the landmark kernel and its pseudo-inverse) in a loop over `--chunks` slices of the batch
(numerically the same: every sample and head is computed on its own), then records

- peak / exact's: attention_proxies.PeakMemory of one bf16-autocast forward under
  `torch.inference_mode()`, depth 1, over exact attention's at the same size (as
  inference_peak_sweep.py);
- aten ops per block: ops of a depth-2 model minus a depth-1 model's (attention_proxies.CountOps),
  i.e. exactly one block's kernel launches in GPU eager mode;
- the largest difference of the fp32 logits from the unchunked model's (in the .json).

    python benchmarks/small_size_chunking.py --out benchmarks/results/small_size_chunking.json

Each chunk repeats every kernel of its unit, so the ops grow by about the unit's op count per
chunk; at these sizes a GPU forward is launch-bound, which is why chunking is not done
(PerformerAttention and NystromAttention docstrings).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Callable, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_proxies import make_model, measure, provenance, write_atomically  # noqa: E402

from effvit_deploy.attention.nystrom import NystromAttention  # noqa: E402
from effvit_deploy.attention.performer import PerformerAttention  # noqa: E402

# mechanism -> (class, the method chunked over the batch: its tensor arguments are [B, heads, n, d])
UNITS: dict[str, tuple[type, str]] = {
    "performer": (PerformerAttention, "_favor"),
    "nystrom": (NystromAttention, "_landmark_inverse"),
}


def over_chunks(method: Callable, chunks: int) -> Callable:
    """`method(self, *tensors)` run on `chunks` slices of the batch (views), joined."""

    def chunked(self, *tensors: torch.Tensor) -> torch.Tensor:
        slices = zip(*(t.tensor_split(chunks) for t in tensors))  # views: no copy of q, k, v
        return torch.cat([method(self, *part) for part in slices])

    return chunked


@contextlib.contextmanager
def chunked_unit(mechanism: str, chunks: int) -> Iterator[None]:
    """`mechanism`'s unit of work split into `chunks` for the duration (1: unchanged)."""
    cls, name = UNITS[mechanism]
    original = getattr(cls, name)
    if chunks > 1:
        setattr(cls, name, over_chunks(original, chunks))
    try:
        yield
    finally:
        setattr(cls, name, original)


def cell(mechanism: str, px: int, chunks: int, batch: int, exact_peak: float) -> dict[str, float]:
    """Peak / exact's, ops per block, and the largest fp32 output difference against no chunking."""
    model = make_model(mechanism, 1, px)
    x = torch.randn(batch, 3, px, px, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        whole = model(x)
        with chunked_unit(mechanism, chunks):
            difference = (model(x) - whole).abs().max().item()
    with chunked_unit(mechanism, chunks):
        one = measure(mechanism, 1, px, batch)
        two = measure(mechanism, 2, px, batch)
    return {"peak_vs_exact": one["peak_mib"] / exact_peak, "ops_per_block": float(two["ops"] - one["ops"]),
            "max_abs_difference_fp32": difference}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", default="64,96,128,160,192", help="comma-separated square sizes in px, multiples of 16")
    parser.add_argument("--chunks", default="1,2,3,4", help="comma-separated chunk counts (1: as shipped)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True, help="results .json (a .md table is written beside it)")
    args = parser.parse_args(argv)
    resolutions = [int(r) for r in args.resolutions.split(",") if r]
    chunk_counts = [int(c) for c in args.chunks.split(",") if c]
    if (not resolutions or any(r < 16 or r % 16 for r in resolutions) or not chunk_counts
            or min(chunk_counts) < 1 or max(chunk_counts) > args.batch):
        parser.error("--resolutions: positive multiples of 16; --chunks: counts from 1 to --batch (slices of the batch)")
    results: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for px in resolutions:
        exact_peak = measure("exact", 1, px, args.batch)["peak_mib"]
        for mechanism in UNITS:
            for chunks in chunk_counts:
                results.setdefault(mechanism, {}).setdefault(str(px), {})[str(chunks)] = cell(mechanism, px, chunks, args.batch, exact_peak)
                print(mechanism, px, chunks, results[mechanism][str(px)][str(chunks)], flush=True)
    record = {
        **provenance(argv),
        "setup": (f"vit_small_patch16_224, batch {args.batch}, bf16 autocast on CPU, torch.inference_mode(); "
                  "peak / exact's at depth 1, aten ops per block = depth 2 minus depth 1"),
        "units": {m: f"{cls.__name__}.{name}" for m, (cls, name) in UNITS.items()},
        "results": results,
    }
    write_atomically(args.out, json.dumps(record, indent=2) + "\n")
    header = ["mechanism (unit chunked)", "px (tokens)", *(f"{c} chunk{'s' * (c > 1)}: peak / exact, ops per block" for c in chunk_counts)]
    rows = [[f"{m} ({record['units'][m]})", f"{px} ({(px // 16) ** 2 + 1})",
             *(f"{r['peak_vs_exact']:.2f}x, {r['ops_per_block']:.0f}" for r in (results[m][str(px)][str(c)] for c in chunk_counts))]
            for m in UNITS for px in resolutions]
    lines = [f"# Chunking the batch below 224 px: peak memory against kernel launches ({record['commit']})", "",
             record["setup"] + ".", "", f"Command: `{record['command']}`; {record['machine']}.", "",
             "| " + " | ".join(header) + " |", "|---|---|" + "---:|" * len(chunk_counts),
             *("| " + " | ".join(row) + " |" for row in rows)]
    write_atomically(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
