"""The digits results table (benchmarks/results/digits_train.md) from the runs' summary.json files.

    flock /tmp/effvit-bench.lock .venv/bin/effvit-train --config train/digits.yaml --attention all --redo
    .venv/bin/python benchmarks/train_digits_table.py --runs runs --name digits

Every figure is read from runs/NAME-ATTENTION/summary.json and config.yaml; nothing is typed in.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from effvit_deploy.attention import ATTENTIONS
from effvit_deploy.atomic import write_text
from effvit_deploy.environment import environment
from effvit_deploy.runs import load_summary

ROOT = Path(__file__).resolve().parents[1]


def table(runs: Path, name: str) -> str:
    rows, config = [], None
    for attention in ATTENTIONS:
        run = runs / f"{name}-{attention}"
        summary = load_summary(run)
        if summary is None:
            raise SystemExit(f"{run}/summary.json is missing: train it first (effvit-train --attention all)")
        config = config or yaml.safe_load((run / "config.yaml").read_text())
        rows.append(
            f"| {attention} | {summary['top1']:.3f} | {summary['top5']:.3f} | {summary['train_s_per_epoch']:.2f} | "
            f"{summary['images_per_s']:.0f} | {summary['peak_mem_bytes'] / 2**20:.0f} | {summary['gflops'] * 1e3:.2f} | "
            f"{summary['params'] / 1e3:.1f} | {summary['best_epoch'] + 1}/{summary['epochs']} |"
        )
    env = environment()
    mk = config["model_kwargs"]
    return "\n".join([
        "# Digits: every attention variant trained from scratch",
        "",
        f"`effvit-train --config train/digits.yaml --attention all`: {config['model']} with depth {mk.get('depth')}, "
        f"width {mk.get('embed_dim')}, patch {mk.get('patch_size')} at {config['img_size']} px "
        f"({(config['img_size'] // mk.get('patch_size', 16)) ** 2} patch tokens), {config['epochs']} epochs, batch "
        f"{config['batch_size']}, {config['optim']['opt']} lr {config['optim']['lr']}, on the bundled scikit-learn "
        f"digits (val split). Machine: {env['cpu_model']}, {env['cpu_cores']} cores, {config['threads'] or 'default'} torch "
        f"thread(s), shared with other jobs. Commit {env['git_commit']}, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC.",
        "",
        "| attention | top-1 | top-5 | s/epoch | train img/s | peak mem (MiB) | MFLOPs/img | params (k) | best epoch |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "top-1/top-5: the best epoch's (its weights are checkpoints/best.safetensors). s/epoch, img/s: medians over "
        "epochs after the first. Peak memory: the process's peak RSS during the run (CPU), which includes the "
        "Python, PyTorch and timm libraries. FLOPs per image (forward, a multiply-add counts 2) at the training "
        "resolution by torch.utils.flop_counter. At 16 tokens the efficient mechanisms save nothing: this table "
        "shows that every variant trains and what each costs at this size, not their scaling.",
        "",
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs")
    p.add_argument("--name", default="digits")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "digits_train.md"))
    args = p.parse_args()
    write_text(args.out, table(Path(args.runs), args.name))
    print(args.out)


if __name__ == "__main__":
    main()
