"""`python -m effvit_deploy.pipeline` (`make demo`): the attention-swap study on cluttered digits,
pretrain -> fine-tune every mechanism -> evaluate -> export -> benchmark -> approximation error
(library: effvit_deploy.study)."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from ..study import COMMAND, PROFILES
from .errors import Parser, existing_file, output_dir, require, run_cli
from .options import parse_with_config, positive_list

EPILOG = f"""examples:
  {COMMAND}                          # the cpu profile when no GPU is visible (make demo)
  {COMMAND} --profile gpu --out runs-gpu
  {COMMAND} --resolutions 128,256 epochs=2 data.train_size=4000
  {COMMAND} --readme-table benchmarks/results/cluttered_study/study.json

A second run reuses what is built while its inputs hold; --redo rebuilds everything. The study
table goes to OUT/report/study.md (and .json), the benchmark report to OUT/report/report.md.
"""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=COMMAND, description=__doc__, epilog=EPILOG)
    p.add_argument("--config", help="YAML of long option names (e.g. resolutions: [128, 192]); flags override it")
    p.add_argument("--out", type=Path, default=Path("runs"), help="where runs and the report go")
    p.add_argument("--profile", default="auto", choices=("auto", *PROFILES),
                   help="auto (gpu when CUDA is visible, else cpu), cpu or gpu")
    p.add_argument("--redo", action="store_true", help="retrain, re-export and re-measure everything")
    p.add_argument("--resolutions", type=positive_list(int),
                   help="benchmark resolutions in px, multiples of the patch size 8 "
                        "(default: the profile's; cpu: 128,192,512 = 256 to 4,096 tokens)")
    p.add_argument("--eval-resolutions", type=positive_list(int),
                   help="resolutions at which every fine-tuned model's top-1 is measured "
                        "(first: the fine-tuning one; default: the profile's)")
    p.add_argument("--pretrain-recipes", type=lambda t: [Path(x.strip()) for x in t.split(",") if x.strip()],
                   help="comma list of exact-attention recipes, each from the previous one's weights; the last "
                        "gives the source model (default: the profile's)")
    p.add_argument("--recipe", type=Path, help="fine-tuning recipe, every mechanism (default: the profile's)")
    p.add_argument("--eval-limit", type=int, help="validation images per top-1 cell (default: the whole split)")
    p.add_argument("--bound", action="store_true",
                   help="also benchmark each model's attention-free bound (the speed-up ceiling); doubles the benchmark")
    p.add_argument("--readme-table", type=Path, metavar="STUDY_JSON",
                   help="print the README's study table from a study.json and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="recipe overrides for both training stages, e.g. epochs=2 data.train_size=4000")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_with_config(build_parser(), argv, "resolutions: [128, 192]")
    command = shlex.join([*COMMAND.split(), *(argv if argv is not None else sys.argv[1:])])
    return run_cli(COMMAND, lambda: _main(args, command), args.debug)


def _main(args: argparse.Namespace, command: str) -> int:
    from ..study import choose_profile, readme_table, run

    if args.readme_table:
        try:
            study = json.loads(existing_file("--readme-table", args.readme_table).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"--readme-table {args.readme_table} is not JSON ({exc}): give a study.json") from None
        print(readme_table(study))
        return 0
    output_dir("--out", args.out)
    require(args.eval_limit is None or args.eval_limit >= 1, "--eval-limit",
            f"must be a positive number of images, got {args.eval_limit}")
    require(args.pretrain_recipes is None or bool(args.pretrain_recipes), "--pretrain-recipes",
            "is empty: give a comma list of recipes, e.g. train/cluttered_pretrain.yaml")
    for recipe in args.pretrain_recipes or ():
        existing_file("--pretrain-recipes", recipe)
    if args.recipe is not None:
        existing_file("--recipe", args.recipe)
    changes: dict[str, Any] = {"overrides": tuple(args.overrides)}
    for key in ("pretrain_recipes", "recipe", "eval_limit", "resolutions", "eval_resolutions"):
        value = getattr(args, key)
        if value is not None:
            changes[key] = tuple(value) if isinstance(value, list) else value
    run(args.out, args.redo, replace(choose_profile(args.profile), **changes), bound=args.bound, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
