"""effvit-train: fine-tune a ViT with one or every attention mechanism (library: effvit_deploy.train)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from ..attention import ATTENTIONS
from .errors import Parser, existing_dir, output_dir, run_cli

EPILOG = """examples:
  effvit-train --config train/digits.yaml --attention all          # runs/digits-exact, runs/digits-linformer, ...
  effvit-train --config train/digits.yaml --attention performer epochs=3 optim.lr=1e-3
  effvit-train --config train/imagenet100_vit_s16.yaml --data /data/imagenet100 --attention nystrom
  torchrun --nproc_per_node 4 $(which effvit-train) --config train/imagenet100_vit_s16.yaml --data /data/imagenet100
  effvit-train --config train/digits.yaml --attention exact --resume   # continue a killed run
  effvit-train --config train/cluttered.yaml --attention all --init-from runs/cluttered_pretrain-exact

Overrides are dotted recipe keys with YAML values (model_kwargs.depth=6, aug=null, ema.enabled=true).
A class folder with no readable image is refused by name; data.on_empty_class=drop leaves it out.
Training stops at the first NaN/inf loss (exit 1), keeping the last complete epoch's checkpoints.
Each run writes OUT/NAME-ATTENTION/: model.json, config.yaml, metrics.jsonl, summary.json, checkpoints/.
"""


def parse_args(argv: Optional[list[str]] = None):
    parser = Parser(prog="effvit-train", description=__doc__, epilog=EPILOG)
    parser.add_argument("--config", required=True, help="a recipe YAML, e.g. train/digits.yaml")
    parser.add_argument(
        "--attention", default=None,
        help=f"one of {', '.join(ATTENTIONS)}, a comma list, or all (default: the recipe's attention)",
    )
    parser.add_argument("--data", default=None, help="digits, cluttered, synthetic, or a folder with train/ and val/")
    parser.add_argument("--out", default="runs", help="parent directory of the run directories (default: runs)")
    parser.add_argument("--name", default=None, help="run name prefix (default: the recipe file's stem)")
    parser.add_argument(
        "--init-from", default=None, metavar="RUN_DIR",
        help="start from this finished run's weights (e.g. runs/NAME-exact): swap in --attention and fine-tune; "
             "summary.json gets the zero-shot (epoch 0) accuracy and the new tensors",
    )
    parser.add_argument("--resume", action="store_true", help="continue each run from its last complete epoch")
    parser.add_argument("--redo", action="store_true", help="train again variants whose run is already complete")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. epochs=3 optim.lr=1e-3")
    return parser.parse_intermixed_args(argv)  # overrides may follow options: --out runs epochs=3


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    return run_cli("effvit-train", lambda: _train(args), args.debug)


def _train(args) -> int:
    from ..train import load_config, train_all
    from ..train.distributed import shutdown

    from ..data import GENERATED

    output_dir("--out", args.out)
    if args.data is not None and args.data not in GENERATED:
        existing_dir("--data", Path(args.data).expanduser(), "a folder with train/ and val/ class folders")
    if args.init_from is not None and Path(args.init_from).expanduser().is_file():  # a missing one: init_from says
        existing_dir("--init-from", Path(args.init_from).expanduser(), "a finished run folder")
    try:
        attentions = args.attention
        if attentions is None:
            attentions = load_config(args.config, args.overrides)["attention"]
        elif attentions != "all":
            attentions = [a.strip() for a in attentions.split(",")]
        overrides = list(args.overrides)
        if args.init_from is not None:
            overrides.append(f"init_from={Path(args.init_from).expanduser().resolve()}")
        runs = train_all(
            args.config, attentions, args.out, overrides, name=args.name, data=args.data,
            redo=args.redo, resume=args.resume,
        )
    except KeyboardInterrupt:
        print("effvit-train: interrupted: continue with --resume", file=sys.stderr)
        return 130
    finally:
        shutdown()
    for run in runs:
        print(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
