"""CPU proxies for GPU cost: aten ops dispatched and bytes written by one forward.

On a GPU in eager mode every aten op is (at least) one kernel launch, and an attention block's
time is dominated by launches at small sizes and by memory traffic at large ones. Both are
counted here on the CPU, exactly, with `TorchDispatchMode`, for one bf16-autocast forward of
ViT-S/16 (12 blocks) at 512 px (1,025 tokens), batch 2, under `torch.inference_mode()`:

- ops per block: every aten op dispatched in the forward, divided by the depth (so patch
  embedding and head are spread over the blocks, the same for every mechanism);
- bytes written: the bytes of every tensor an op writes, in MiB: fresh outputs and in-place or
  out= targets; views and inputs handed back unchanged (eval-mode dropout, no-op casts) write
  nothing and are not counted;
- peak memory at inference: the most bytes held at once by tensors the forward allocates (every
  fresh storage counts from the op that creates it until it is freed; weights and the input
  are not counted), the quantity a caching GPU allocator's peak follows;
- peak memory in training: the same over one bf16-autocast forward and backward of the loss
  (the sum of the logits) at `--train-resolution` (default 1024 px, 4,097 tokens), batch 1, no
  optimizer step: activations saved for backward, the gradients and every temporary.

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
import weakref
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

MECHANISMS = ("exact", "linformer", "performer", "nystrom", "atrous")
BOUND = "attention-free"
FLEX = "atrous-flex"  # atrous's CUDA path: one compiled FlexAttention kernel per branch
MIB = 2**20


class PeakMemory(TorchDispatchMode):
    """The peak of the bytes held by storages that ops allocate while the mode is active.

    A storage counts from the op that returns it fresh until Python frees it (a finalizer on the
    storage), so temporaries freed inside a layer count while they live, exactly as on a caching
    allocator; storages that existed before (weights, inputs) never count."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self._tracked.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat, _ = tree_flatten(out)
        for t in flat:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = id(storage)
            if key in self._tracked or storage.nbytes() == 0:
                continue
            if any(storage.data_ptr() == a.untyped_storage().data_ptr() for a in tree_flatten((args, kwargs))[0]
                   if isinstance(a, torch.Tensor)):
                continue  # an input's storage handed back (views, in-place ops)
            self._tracked.add(key)
            self.live += storage.nbytes()
            weakref.finalize(storage, self._release, key, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


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
            elif t.untyped_storage().data_ptr() not in storages:
                # a fresh tensor, not a view nor an input handed back (eval dropout, no-op casts).
                # Ops whose schema may alias (to, reshape, contiguous) count when they copy.
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


class _FlexKernel(torch.autograd.Function):
    """Stands in for one compiled FlexAttention kernel: writes its [B, heads, N, head_dim] output
    and, when autograd records it, saves q, k, v, that output and its [B, heads, N] log-sum-exp
    for the backward kernel, which writes dq, dk, dv (what torch's FlexAttentionAutogradOp saves
    and the compiled kernels write on CUDA)."""

    @staticmethod
    def forward(ctx, q, k, v):
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        out = torch.empty_like(q)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@contextlib.contextmanager
def flex_as_one_kernel():
    """Atrous takes its CUDA path on the CPU, each FlexAttention call standing in as the one
    fused kernel it compiles to there (`_FlexKernel`)."""
    from effvit_deploy.attention import atrous

    saved = atrous.use_flex, atrous._flex_attention
    atrous.use_flex = lambda q: True
    atrous._flex_attention = lambda q, k, v, score_mod=None, block_mask=None: _FlexKernel.apply(q, k, v)
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
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16), PeakMemory() as memory:
        model(x)
    return {
        "ops_per_block": counter.ops / depth,
        "ops": counter.ops,
        "mib_written": counter.bytes_written / MIB,
        "peak_mib": memory.peak / MIB,
        "top_ops": {name: count for name, count in top},
    }


def measure_training(attention: str, depth: int = 12, resolution: int = 1024, batch: int = 1) -> dict[str, Any]:
    """Peak MiB held during one bf16-autocast forward and backward of `attention`'s model."""
    if attention == FLEX:
        with flex_as_one_kernel():
            return measure_training("atrous", depth, resolution, batch)
    model = make_model(attention, depth, resolution).train()
    x = torch.randn(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    with PeakMemory() as memory:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x).float().sum()
        loss.backward()
        del loss
    return {"train_peak_mib": memory.peak / MIB}


def write_atomically(path: Path, text: str) -> None:
    """path's new text, written to a temporary file beside it and renamed over it. The proxies
    measure older checkouts too, so they use no writer of the package."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def provenance(argv: list[str] | None) -> dict[str, str]:
    """The command line, the measured checkout's commit and the machine, for a results record."""
    return {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "commit": _commit(),
        "machine": f"{platform.machine()} {platform.processor() or platform.platform()}, torch {torch.__version__}",
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


COLUMNS = (  # (header, results key, format)
    ("aten ops per block", "ops_per_block", "{:.1f}"),
    ("MiB written", "mib_written", "{:.0f}"),
    ("written / bound", "bytes_vs_bound", "{:.2f}x"),
    ("peak MiB", "peak_mib", "{:.0f}"),
    ("peak / exact", "peak_vs_exact", "{:.2f}x"),
    ("training peak MiB", "train_peak_mib", "{:.0f}"),
    ("training peak / exact", "train_peak_vs_exact", "{:.2f}x"),
)


def _cell(row: dict[str, Any] | None, key: str, fmt: str) -> str:
    value = (row or {}).get(key)
    return "-" if value is None else fmt.format(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=512, help="square input size in px (default 512)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--train-resolution", type=int, default=1024,
                        help="square input size in px of the training-memory proxy, batch 1 (default 1024: 4,097 tokens; 0 skips it)")
    parser.add_argument("--mechanisms", default=",".join((BOUND,) + MECHANISMS), help=f"comma-separated subjects; {FLEX}: "
                        "atrous's CUDA path with each FlexAttention call counted as its one fused kernel")
    parser.add_argument("--out", type=Path, required=True, help="results .json (a .md table is written beside it)")
    parser.add_argument("--before", type=Path, help="a results .json of another checkout: its figures become columns")
    args = parser.parse_args(argv)
    subjects = [m for m in args.mechanisms.split(",") if m]
    unknown = [m for m in subjects if m not in (BOUND, FLEX) + MECHANISMS]
    if (unknown or args.resolution % 16 or args.train_resolution % 16 or args.train_resolution < 0
            or min(args.batch, args.depth, args.resolution) < 1):
        parser.error(f"--mechanisms from {', '.join((BOUND, FLEX) + MECHANISMS)}; --resolution and --train-resolution "
                     "positive multiples of 16 (--train-resolution 0 skips training)")
    results = {m: measure(m, args.depth, args.resolution, args.batch) for m in subjects}
    if args.train_resolution:
        for m in subjects:
            results[m].update(measure_training(m, args.depth, args.train_resolution))
    bound = results.get(BOUND, {}).get("mib_written")
    exact = results.get("exact", {})
    for row in results.values():
        row["bytes_vs_bound"] = row["mib_written"] / bound if bound else None
        row["peak_vs_exact"] = row["peak_mib"] / exact["peak_mib"] if exact else None
        if "train_peak_mib" in row and "train_peak_mib" in exact:
            row["train_peak_vs_exact"] = row["train_peak_mib"] / exact["train_peak_mib"]
    tokens = (args.resolution // 16) ** 2 + 1
    setup = (f"vit_small_patch16_224, depth {args.depth}, {args.resolution} px ({tokens} tokens), batch "
             f"{args.batch}, bf16 autocast on CPU, torch.inference_mode(), second call counted")
    if args.train_resolution:
        setup += (f"; training peak: one forward + backward at {args.train_resolution} px "
                  f"({(args.train_resolution // 16) ** 2 + 1} tokens), batch 1")
    record = {**provenance(argv), "setup": setup, "results": results}
    write_atomically(args.out, json.dumps(record, indent=2) + "\n")
    before = json.loads(args.before.read_text()) if args.before else None
    title = f"{before['commit']} (before) -> {record['commit']}" if before else record["commit"]
    lines = [f"# Attention CPU proxies: {title}", "", record["setup"] + ".", "",
             f"Command: `{record['command']}`; {record['machine']}.", ""]
    if before:
        lines += [f"Before: `{before['command']}` with PYTHONPATH at a `git worktree add --detach` of "
                  f"{before['commit']}, in its own process; `-`: not measured by that version.", ""]
        headers = [f"{h} {when}" for h, _, _ in COLUMNS for when in ("before", "after")]
    else:
        headers = [h for h, _, _ in COLUMNS]
    lines += ["| attention | " + " | ".join(headers) + " |", "|---|" + "---:|" * len(headers)]
    for name, row in results.items():
        old = before["results"].get(name) if before else None
        cells = [c for _, key, fmt in COLUMNS
                 for c in ((_cell(old, key, fmt), _cell(row, key, fmt)) if before else (_cell(row, key, fmt),))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    write_atomically(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
