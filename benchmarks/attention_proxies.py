"""CPU proxies for GPU cost: aten ops dispatched and bytes written by one forward.

On a GPU in eager mode every aten op is (at least) one kernel launch, and an attention block's
time is dominated by launches at small sizes and by memory traffic at large ones. Both are
counted here on the CPU, exactly, with `TorchDispatchMode`, for one bf16-autocast forward of
ViT-S/16 (12 blocks) at 512 px (1,025 tokens), batch 2, under `torch.inference_mode()`:

- ops per block: every aten op dispatched in the forward, divided by the depth (so patch
  embedding and head are spread over the blocks, the same for every mechanism);
- bytes written: the bytes of every tensor an op writes, in MiB: fresh outputs and in-place or
  out= targets; views and inputs handed back unchanged (eval-mode dropout, no-op casts) write
  nothing and are not counted.

Subjects: each mechanism with its defaults; `atrous-flex`, atrous's CUDA path (FlexAttention with
a block mask) with each FlexAttention call counted as the one fused kernel it compiles to there
(its internal reads are not counted; the CPU cannot run that kernel); and the attention-free bound (the exact model whose
`attend` returns v: each token keeps its own value, the projections and MLPs unchanged). It
defines the bound itself, so it measures any checkout of this repository: run it with
PYTHONPATH pointing at another tree (e.g. `git worktree add --detach /tmp/before be90d95`) for
a before/after comparison from the same script.

    python benchmarks/attention_proxies.py --out benchmarks/results/attention_proxies.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

MECHANISMS = ("exact", "linformer", "performer", "nystrom", "atrous")
BOUND = "attention-free"
FLEX = "atrous-flex"  # atrous's CUDA path: one compiled FlexAttention kernel per branch
MIB = 2**20


class CountOps(TorchDispatchMode):
    """Counts aten ops (overload packets) and the bytes of the tensors they write."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.bytes_written = 0
        self.by_op: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        name = str(func.overloadpacket)
        self.by_op[name] = self.by_op.get(name, 0) + 1
        returns = func._schema.returns
        flat, _ = tree_flatten(out)
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        inputs, _ = tree_flatten((args, kwargs))
        storages = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
        for i, t in enumerate(tensors):
            alias = returns[min(i, len(returns) - 1)].alias_info if returns else None
            if alias is not None and alias.is_write:  # in-place or out=: written
                self.bytes_written += t.numel() * t.element_size()
            elif alias is None and t.untyped_storage().data_ptr() not in storages:
                # a fresh tensor; not a view, nor an input handed back (eval dropout, no-op casts)
                self.bytes_written += t.numel() * t.element_size()
        return out


def make_model(attention: str, depth: int, img_size: int, **kwargs: Any) -> torch.nn.Module:
    """ViT-S/16 with `attention` (or the attention-free bound), eval, fixed seed."""
    from effvit_deploy import build_model

    torch.manual_seed(0)
    mechanism = "exact" if attention == BOUND else attention
    model = build_model("vit_small_patch16_224", attention=mechanism, num_classes=100, depth=depth,
                        img_size=img_size, **kwargs).eval()
    if attention == BOUND:
        for block in model.blocks:
            block.attn.attend = types.MethodType(lambda self, q, k, v, grid=None, **_: v, block.attn)
    return model


@contextlib.contextmanager
def flex_as_one_kernel():
    """Atrous takes its CUDA path on the CPU, each FlexAttention call standing in as the one
    fused kernel it compiles to there: one op writing its [B, heads, H * W, head_dim] output."""
    from effvit_deploy.attention import atrous

    saved = atrous.use_flex, atrous._flex_attention
    atrous.use_flex = lambda q: True
    atrous._flex_attention = lambda q, k, v, score_mod=None, block_mask=None: torch.empty_like(q)
    try:
        yield
    finally:
        atrous.use_flex, atrous._flex_attention = saved


def measure(attention: str, depth: int = 12, resolution: int = 512, batch: int = 2) -> dict[str, Any]:
    """Ops per block and MiB written by one bf16-autocast forward of `attention`'s model."""
    if attention == FLEX:
        with flex_as_one_kernel():
            return measure("atrous", depth, resolution, batch)
    model = make_model(attention, depth, resolution)
    x = torch.randn(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)  # warm-up: lazily built buffers are not counted
        with CountOps() as counter:
            model(x)
    top = sorted(counter.by_op.items(), key=lambda kv: -kv[1])[:12]
    return {
        "ops_per_block": counter.ops / depth,
        "ops": counter.ops,
        "mib_written": counter.bytes_written / MIB,
        "top_ops": {name: count for name, count in top},
    }


def _commit() -> str:
    import effvit_deploy

    tree = Path(effvit_deploy.__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "effvit_deploy"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=512, help="square input size in px (default 512)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--mechanisms", default=",".join((BOUND,) + MECHANISMS), help=f"comma-separated subjects; {FLEX}: "
                        "atrous's CUDA path with each FlexAttention call counted as its one fused kernel")
    parser.add_argument("--out", type=Path, required=True, help="results .json (a .md table is written beside it)")
    parser.add_argument("--before", type=Path, help="a results .json of another checkout: its figures become columns")
    args = parser.parse_args(argv)
    subjects = [m for m in args.mechanisms.split(",") if m]
    unknown = [m for m in subjects if m not in (BOUND, FLEX) + MECHANISMS]
    if unknown or args.resolution % 16 or min(args.batch, args.depth, args.resolution) < 1:
        parser.error(f"--mechanisms from {', '.join((BOUND,) + MECHANISMS)}; --resolution a positive multiple of 16")
    results = {m: measure(m, args.depth, args.resolution, args.batch) for m in subjects}
    bound = results.get(BOUND, {}).get("mib_written")
    for row in results.values():
        row["bytes_vs_bound"] = row["mib_written"] / bound if bound else None
    tokens = (args.resolution // 16) ** 2 + 1
    record = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "commit": _commit(),
        "machine": f"{platform.machine()} {platform.processor() or platform.platform()}, torch {torch.__version__}",
        "setup": f"vit_small_patch16_224, depth {args.depth}, {args.resolution} px ({tokens} tokens), batch "
                 f"{args.batch}, bf16 autocast on CPU, torch.inference_mode(), second call counted",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(args.out)
    lines = [f"# Attention CPU proxies ({record['commit']})", "", record["setup"] + ".", "",
             f"Command: `{record['command']}`; {record['machine']}.", "",
             "| attention | aten ops per block | MiB written | written / bound |", "|---|---:|---:|---:|"]
    before = json.loads(args.before.read_text()) if args.before else None
    if before:
        lines[0] = f"# Attention CPU proxies: {before['commit']} (before) -> {record['commit']}"
        lines[-2:] = ["| attention | ops per block before | after | MiB written before | after | written / bound before | after |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
        lines.insert(-2, f"Before: `{before['command']}` with PYTHONPATH at a `git worktree add --detach` of {before['commit']}, in its own process.\n")
    for name, row in results.items():
        ratio = f"{row['bytes_vs_bound']:.2f}x" if row["bytes_vs_bound"] else "n/a"
        old = before["results"].get(name) if before else None
        if before:
            was = (f"{old['ops_per_block']:.1f}", f"{old['mib_written']:.0f}", f"{old['bytes_vs_bound']:.2f}x") if old else ("-",) * 3
            lines.append(f"| {name} | {was[0]} | {row['ops_per_block']:.1f} | {was[1]} | {row['mib_written']:.0f} | {was[2]} | {ratio} |")
        else:
            lines.append(f"| {name} | {row['ops_per_block']:.1f} | {row['mib_written']:.0f} | {ratio} |")
    md = args.out.with_suffix(".md")
    md.with_suffix(".md.tmp").write_text("\n".join(lines) + "\n")
    md.with_suffix(".md.tmp").replace(md)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
