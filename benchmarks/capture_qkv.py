"""Save the query/key/value activations of a trained exact model, to test mechanisms on them.

    python benchmarks/capture_qkv.py --run runs/cluttered-exact --resolutions 128,256 --blocks 0,3 \
        --out tests/data/cluttered_qkv.safetensors

Writes, for each resolution R and block b, tensors `R/b/q`, `R/b/k`, `R/b/v` of shape
[images, heads, N, head_dim] in float16 (what the layer's `attend` receives, so
`F.scaled_dot_product_attention(q, k, v)` is the block's exact attention), with the patch grid of
each resolution, the model's training patch grid (`train_grid`, what grid-sized budgets such as
Linformer's projection and atrous windows are built for) and provenance in the file's metadata.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from effvit_deploy.approximation import attention_qkv, validation_images
from effvit_deploy.atomic import atomic_path
from effvit_deploy.environment import environment
from effvit_deploy.runs import load_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="an exact-attention run directory")
    parser.add_argument("--resolutions", default="128,256", help="comma-separated square sizes")
    parser.add_argument("--blocks", default="0", help="comma-separated block indices")
    parser.add_argument("--images", type=int, default=1, help="validation images per resolution")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    model, card = load_run(args.run)
    if card.attention != "exact":
        parser.error(f"{args.run} uses {card.attention} attention; capture from an exact run")
    blocks = [int(b) for b in args.blocks.split(",")]
    tensors, grids = {}, {}
    for resolution in (int(r) for r in args.resolutions.split(",")):
        per_block = attention_qkv(model, validation_images(card.data, card, resolution, args.images))
        for b in blocks:
            q, k, v, (H, W), prefix = per_block[b]
            grids[str(resolution)] = {"grid": [H, W], "prefix": prefix}
            for name, t in (("q", q), ("k", k), ("v", v)):
                tensors[f"{resolution}/{b}/{name}"] = t.half().contiguous()
    env = environment()
    train_grid = [card.img_size // card.patch_size] * 2
    metadata = {"run": args.run.name, "model": card.model, "data": json.dumps(card.data),
                "grids": json.dumps(grids), "train_grid": json.dumps(train_grid), "blocks": json.dumps(blocks), "commit": str(env.get("git_commit")),
                "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])}
    with atomic_path(args.out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    print(f"wrote {args.out} ({sum(t.numel() for t in tensors.values()) * 2 / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
