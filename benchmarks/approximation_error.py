"""Approximation-error table: each mechanism vs exact attention, block by block, on a model's
own activations at several sequence lengths (effvit_deploy.approximation).

    python benchmarks/approximation_error.py --run runs/digits-exact --resolutions 32,64,128
    python benchmarks/approximation_error.py --model vit_small_patch16_224 --weights vit_s16.safetensors \
        --data imagenet100/ --resolutions 224,384,512

Writes OUT.md (mean relative error per mechanism and sequence length, plus per-block errors)
and OUT.json beside it; each budget in fp32 and under bf16 autocast, against exact attention in
float64 (`--precisions`). `--mechanisms-from DIR` measures the attention modules of another
checkout (e.g. `git worktree add --detach /tmp/before COMMIT`) on this checkout's model and
data, for before/after tables on data sets the older checkout cannot load.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path

import torch

from effvit_deploy import build_model
from effvit_deploy.approximation import PRECISIONS, error_table
from effvit_deploy.runs import ModelCard, load_run


def other_attentions(tree: Path) -> dict:
    """ATTENTIONS of the checkout at `tree`, imported under another package name."""
    folder = tree / "effvit_deploy" / "attention"
    if not (folder / "__init__.py").is_file():
        raise SystemExit(f"{tree} has no effvit_deploy/attention package: pass a checkout of this repository")
    package = types.ModuleType("other_attention")
    package.__path__ = [str(folder)]
    sys.modules["other_attention"] = package
    modules = {name: importlib.import_module(f"other_attention.{name}") for name in
               ("exact", "linformer", "performer", "nystrom", "atrous")}
    return {name: getattr(module, f"{name.capitalize()}Attention") for name, module in modules.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="an exact-attention run directory (its model and validation data)")
    source.add_argument("--model", help="a timm ViT name (with --weights and --data)")
    parser.add_argument("--weights", help="local timm weights file for --model")
    parser.add_argument("--data", default="digits", help="digits, synthetic or an ImageFolder root (for --model)")
    parser.add_argument("--resolutions", default="32,64,128", help="comma-separated square sizes")
    parser.add_argument("--images", type=int, default=16, help="validation images per resolution")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/approximation_error.md"))
    parser.add_argument("--mechanisms-from", type=Path, help="measure the attention modules of this checkout instead")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 (CPU autocast)")
    parser.add_argument("--note", default="", help="a line for the table's header (what is compared, the model's training)")
    args = parser.parse_args(argv)
    precisions = args.precisions.split(",")
    if unknown := [p for p in precisions if p not in PRECISIONS]:
        parser.error(f"--precisions {','.join(unknown)}: choose from {', '.join(PRECISIONS)}")
    attentions = other_attentions(args.mechanisms_from) if args.mechanisms_from else None
    torch.manual_seed(0)
    if args.run:
        model, card = load_run(args.run)
        data, label = card.data, f"run {args.run.name} ({card.model}, trained on {card.data.get('name')})"
    else:
        model = build_model(args.model, attention="exact", pretrained=args.weights or False)
        card = ModelCard.for_model(model, img_size=model.patch_embed.img_size[0])
        name = args.data if args.data in ("digits", "synthetic") else "folder"
        data = {"name": name, "root": None if name != "folder" else args.data}
        label = f"{args.model} ({args.weights or 'random init'}) on {args.data}"
    if card.attention != "exact":
        parser.error(f"{args.run} uses {card.attention} attention; the reference must be an exact run")

    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    resolutions = [int(r) for r in args.resolutions.split(",")]
    error_table(model, card, data, resolutions, args.out, label, command, images=args.images, note=args.note,
                precisions=precisions, attentions=attentions)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
