"""Inference peak memory of every mechanism against exact attention's, across input resolutions.

benchmarks/attention_proxies.py measures one size; this sweeps the peak-memory proxy over
resolutions (default 64-1024 px: 17 to 4,097 tokens) at one batch size, so "no more memory than
exact attention" can be read at every size rather than asserted at a few. Each cell is the most
bytes held at once by tensors one bf16-autocast forward of ViT-S/16 allocates under
`torch.inference_mode()` (attention_proxies.PeakMemory: the quantity a caching GPU allocator's
peak follows), divided by exact attention's at the same size. Depth 1 by default: inference frees
a block's activations before the next block runs, so one block holds the model's peak (the
cached bf16 weight copies that autocast keeps for a deeper model are the same for every
mechanism and would only dilute the ratio). Each model is built for the resolution it runs at,
as effvit-train would fine-tune it there.

    python benchmarks/inference_peak_sweep.py --out benchmarks/results/inference_peak_sweep.json

Like attention_proxies.py it measures whichever effvit_deploy is on PYTHONPATH, so `--before` can
compare another checkout (`git worktree add --detach /tmp/before <commit>`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_proxies import BOUND, MECHANISMS, measure, provenance, write_atomically  # noqa: E402

RESOLUTIONS = (64, 96, 128, 160, 192, 224, 256, 384, 512, 768, 1024)


def sweep(resolutions, batch: int, depth: int, subjects) -> dict[int, dict[str, float | str]]:
    """{px: {"exact_mib": MiB, subject: peak / exact's, or the reason it cannot be built}}."""
    rows = {}
    for px in resolutions:
        exact = measure("exact", depth, px, batch)["peak_mib"]
        row: dict[str, float | str] = {"exact_mib": exact}
        for name in subjects:
            try:
                row[name] = measure(name, depth, px, batch)["peak_mib"] / exact
            except ValueError as error:  # e.g. a Linformer projection longer than the patch grid
                row[name] = f"n/a: {error}"
        rows[px] = row
        print(px, {k: (round(v, 3) if isinstance(v, float) else "n/a") for k, v in row.items()}, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", default=",".join(map(str, RESOLUTIONS)),
                        help="comma-separated square input sizes in px, multiples of 16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="results .json (a .md table is written beside it)")
    parser.add_argument("--before", type=Path, help="a results .json of another checkout: cells read before -> after")
    args = parser.parse_args(argv)
    resolutions = [int(r) for r in args.resolutions.split(",") if r]
    if not resolutions or any(r < 16 or r % 16 for r in resolutions) or min(args.batch, args.depth) < 1:
        parser.error("--resolutions: positive multiples of 16; --batch and --depth >= 1")
    subjects = [BOUND, *(m for m in MECHANISMS if m != "exact")]
    rows = sweep(resolutions, args.batch, args.depth, subjects)
    record = {
        **provenance(argv),
        "setup": (f"vit_small_patch16_224, depth {args.depth}, batch {args.batch}, bf16 autocast on CPU, "
                  "torch.inference_mode(); peak bytes held by tensors the forward allocates"),
        "results": {str(px): row for px, row in rows.items()},
    }
    write_atomically(args.out, json.dumps(record, indent=2) + "\n")
    before = json.loads(args.before.read_text()) if args.before else None

    def cell(px: int, key: str, fmt: str) -> str:
        def one(row):
            value = (row or {}).get(key)
            return fmt.format(value) if isinstance(value, float) else ("n/a" if value else "-")
        after = one(rows[px])
        return f"{one(before['results'].get(str(px)))} -> {after}" if before else after

    table = [[f"{px} ({(px // 16) ** 2 + 1})", cell(px, "exact_mib", "{:.1f}"), *(cell(px, s, "{:.2f}x") for s in subjects)]
             for px in rows]
    title = f"{before['commit']} (before) -> {record['commit']}" if before else record["commit"]
    lines = [f"# Inference peak memory / exact attention's, by resolution: {title}", "",
             record["setup"] + ".", "", f"Command: `{record['command']}`; {record['machine']}."]
    if before:
        lines.append(f"Before: `{before['command']}` with PYTHONPATH at a `git worktree add --detach` of "
                     f"{before['commit']}, in its own process; `-`: not measured by that version.")
    lines += ["n/a: the mechanism's defaults do not fit that patch grid (the reason is in the .json).", "",
              "| " + " | ".join(["px (tokens)", "exact peak MiB", *subjects]) + " |",
              "|---|" + "---:|" * (len(subjects) + 1), *("| " + " | ".join(row) + " |" for row in table)]
    write_atomically(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
