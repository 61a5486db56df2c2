"""Training-step benchmark: forward + loss + backward + AdamW step, per model, resolution and batch.

What a training run pays per step, measured the way the inference sweep measures a call
(`harness.time_runner`: untimed warm-up steps, then each step timed with CUDA events on a GPU
or `time.perf_counter` on CPU, device synchronised; median and spread): one step is
`zero_grad(set_to_none=True)`, the forward under autocast (precision "bf16": bf16 autocast, fp32
weights and optimizer state, as mixed-precision training runs; "fp32": no autocast), cross-entropy
on fixed labels, `backward()` and the optimizer step (AdamW, weight decay 0.05, from timm's
`create_optimizer_v2`, the factory `effvit-train` uses; its layer-wise lr decay changes parameter
groups, not the work, and is left out). Each configuration gets a fresh model and optimizer.

Reported per row: ms/step (`latency_*_ms` fields, the harness's names), images/s
(`throughput_ips`), peak memory (`peak_mem_bytes`: on CUDA `torch.cuda.max_memory_allocated`
above what was allocated before the first step, i.e. activations, gradients, AdamW state and
workspaces, not the weights; on CPU the resident-set high-water rise of `memory.CpuRssPeak`,
measured in-process, so heap freed by an earlier configuration and reused is not counted), and
the epoch time it implies for `epoch_images` training images (default ImageNet-100's 126,689):
ceil(images / batch) steps x the median step, data loading excluded.

Rows go to OUT/train_step.jsonl (+ .csv), a sibling of the inference sweep's results.jsonl,
and `write_train_report` writes OUT/train_step.md, reading each variant against the
attention-free bound (`bench.bound`) and against exact attention.
"""
from __future__ import annotations

import gc
import math
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch import nn
from tqdm import tqdm

from ..atomic import write_text
from ..backends import TORCH_DTYPES, Runner, backend_device
from ..environment import environment
from ..runs import load_run
from .analysis import EXACT, display_order, latest_rows
from .bound import BOUND
from .results import append_results, load_results

TRAIN_STEP = "train_step"  # OUT/train_step.jsonl, .csv, .md
IMAGENET100_TRAIN_IMAGES = 126_689
TRAIN_PRECISIONS = ("fp32", "bf16")  # bf16: autocast to backends.TORCH_DTYPES["bf16"], weights fp32


def check_train_options(precisions: Sequence[str], epoch_images: int = IMAGENET100_TRAIN_IMAGES) -> None:
    """Raises ValueError (one line, the valid values) for a precision training does not take or
    a data set size that is not positive."""
    bad = [p for p in precisions if p not in TRAIN_PRECISIONS]
    if bad:
        raise ValueError(f"--train-step precision {', '.join(bad)} is not supported; valid: "
                         f"{', '.join(TRAIN_PRECISIONS)} (bf16 = bf16 autocast, fp32 weights)")
    if epoch_images <= 0:
        raise ValueError(f"--epoch-images must be a positive number of training images, got {epoch_images}")


def train_runner(model: nn.Module, precision: str, device: str, num_classes: int, lr: float = 1e-4) -> Runner:
    """A Runner whose `run` is one training step of `model` on a prepared batch.

    `prepare(images [B, 3, H, W] float32 numpy)` -> (images on `device`, labels [B] int64);
    `run` returns the detached loss (a scalar tensor). The model is put in train mode on
    `device`; its AdamW state is created by the first (warm-up) step.
    """
    check_train_options([precision])
    amp = None if precision == "fp32" else TORCH_DTYPES[precision]
    model = model.to(device).train()
    optimizer = create_optimizer_v2(model, "adamw", lr=lr, weight_decay=0.05)

    def prepare(batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
        return x, torch.arange(len(batch), device=device) % num_classes

    def step(xy: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = xy
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=amp or torch.bfloat16, enabled=amp is not None):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return Runner("torch", precision, device, None, prepare=prepare, run=step,
                  to_numpy=lambda loss: loss.float().cpu().numpy().reshape(1), synchronize=sync)


def epoch_fields(latency_median_ms: float, batch: int, epoch_images: int) -> dict[str, Any]:
    """The epoch a step time implies: ceil(images / batch) steps x the median step (s)."""
    steps = math.ceil(epoch_images / batch)
    return {"epoch_images": epoch_images, "epoch_steps": steps, "epoch_s": steps * latency_median_ms / 1e3}


def _model(run_dir: Path) -> tuple[nn.Module, int]:
    model = load_run(run_dir)[0]
    return model, int(model.num_classes)


def _release(device: str) -> None:
    """Free a finished (or failed) configuration's tensors before the next one is built."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def measure_train_step(config: dict[str, Any]) -> dict[str, Any]:
    """Time one training configuration in this process: config has run_dir, precision,
    batch, resolution, warmup, repeats, max_time_s (and optionally epoch_images). Never raises
    for a failing configuration: `status` is ok / oom / error with the reason (worker.measure)."""
    from .worker import measure

    device = backend_device("torch")

    def factory(cfg: dict[str, Any]) -> Runner:
        model, classes = _model(Path(cfg["run_dir"]))
        return train_runner(model, cfg["precision"], device, classes)

    result = measure({**config, "mode": "model", "backend": "torch"}, factory)
    _release(device)
    amp = "bf16 autocast" if config["precision"] == "bf16" else "fp32"
    result["implementation"] = f"torch: forward + cross-entropy + backward + AdamW step ({amp}, eager)"
    if result["status"] == "ok":
        result.update(epoch_fields(result["latency_median_ms"], config["batch"],
                                   config.get("epoch_images", IMAGENET100_TRAIN_IMAGES)))
    return result


def train_step_sweep(
    run_dirs: Sequence[Union[str, Path]],
    resolutions: Sequence[int],
    batch_sizes: Sequence[int],
    precisions: Sequence[str],
    out_dir: Union[str, Path],
    *,
    bound: bool = True,
    warmup: int = 3,
    repeats: int = 10,
    max_time_s: Optional[float] = 20.0,
    epoch_images: int = IMAGENET100_TRAIN_IMAGES,
    progress: bool = True,
) -> Path:
    """Time a training step for every run x precision x batch x resolution, in this process,
    appending one row each to out_dir/train_step.jsonl (+ .csv); returns the JSONL path.

    One process for the whole sweep (process start costs seconds on a GPU host); a configuration
    that runs out of memory is recorded as "oom" and the same (run, precision, batch) is not
    tried at larger resolutions, so one OOM does not end the sweep. `bound` adds the
    attention-free bound of the runs' model (its weights copied into out_dir/cache).
    """
    from .bound import bound_subjects
    from .matrix import model_subject

    check_train_options(precisions, epoch_images)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dirs = [Path(d) for d in run_dirs]
    if bound and run_dirs:
        run_dirs += bound_subjects(run_dirs, out_dir / "cache", resolutions, max(batch_sizes))
    subjects = [model_subject(d) for d in dict.fromkeys(run_dirs)]
    if not subjects:
        raise ValueError("nothing to train-step: give run directories or --model")
    env = environment()
    sweep = {"sweep_started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "warmup": warmup,
             "repeats_max": repeats, "max_time_s": max_time_s}
    failed_at: dict[tuple, tuple[str, int]] = {}
    configs = [(s, p, b, r) for r in sorted(resolutions) for b in batch_sizes for s in subjects for p in precisions]
    path = out_dir / f"{TRAIN_STEP}.jsonl"
    for subject, precision, batch, res in tqdm(configs, desc="train-step", unit="config", disable=not progress):
        row = {"mode": "train", "run": subject.name, "model": subject.model, "attention": subject.attention,
               "backend": "torch", "precision": precision, "batch": batch, "resolution": res,
               "tokens": subject.tokens(res), "params": subject.params, "patch": subject.patch, **sweep}
        key = (subject.name, precision, batch)
        if key in failed_at:
            result = {"status": "skipped", "reason": f"not run: {failed_at[key][0]} at {failed_at[key][1]} px"}
        else:
            result = measure_train_step({"run_dir": str(subject.run_dir), "precision": precision, "batch": batch, "resolution": res,
                                         "warmup": warmup, "repeats": repeats, "max_time_s": max_time_s,
                                         "epoch_images": epoch_images})
            if result["status"] == "oom":
                failed_at[key] = ("oom", res)
        row.update(result)
        row["timestamp"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        row["env"] = env
        path = append_results(out_dir, [row], stem=TRAIN_STEP)
    return path


def _size(nbytes: Optional[int]) -> str:
    if nbytes is None:
        return "- MiB"
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"


def _cell(row: dict[str, Any], bound: Optional[dict], exact: Optional[dict]) -> str:
    if row["status"] != "ok":
        return row["status"]
    ms, mem = row["latency_median_ms"], row.get("peak_mem_bytes")
    parts = [f"{ms:.1f} ms", f"{row['throughput_ips']:.0f} img/s",
             _size(mem), f"epoch {row['epoch_s']:.0f} s"]
    ratios = []
    if bound and bound["status"] == "ok":
        ratios.append(f"{ms / bound['latency_median_ms']:.2f}x bound")
    if exact and exact["status"] == "ok":
        ratios.append(f"{ms / exact['latency_median_ms']:.2f}x exact")
        if mem is not None and exact.get("peak_mem_bytes"):
            ratios.append(f"mem {mem / exact['peak_mem_bytes']:.2f}x exact")
    return " / ".join(parts) + (f" ({'; '.join(ratios)})" if ratios else "")


def train_tables(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown tables, one per (precision, batch): attention x resolution cells of ms/step,
    images/s, peak memory, epoch time, and ratios to the bound and to exact (latest row wins)."""
    cells: dict[tuple, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        cells[(r["precision"], r["batch"])][r["attention"]][r["resolution"]] = r
    out = []
    for (precision, batch), by_att in sorted(cells.items()):
        sizes = sorted({res for by_res in by_att.values() for res in by_res})
        epoch = next((r["epoch_images"] for by in by_att.values() for r in by.values() if r.get("epoch_images")), None)
        out += [f"### {precision}, batch {batch}" + (f" (epoch = {epoch:,} images)" if epoch else ""), "",
                "| attention | " + " | ".join(f"{s} px" for s in sizes) + " |", "|---|" + "---|" * len(sizes)]
        for att in display_order(by_att):
            out.append(f"| {att} | " + " | ".join(
                _cell(by_att[att][s], by_att.get(BOUND, {}).get(s), by_att.get(EXACT, {}).get(s) if att != EXACT else None)
                if s in by_att[att] else "-" for s in sizes) + " |")
        out.append("")
    return out


def write_train_report(results_path: Union[str, Path], out_dir: Optional[Union[str, Path]] = None) -> Path:
    """OUT/train_step.md from a train_step.jsonl: the tables of `train_tables`, failures with
    their reasons, and the machine; returns its path."""
    results_path = Path(results_path)
    rows, _ = latest_rows(load_results(results_path))
    out_dir = Path(out_dir) if out_dir else results_path.parent
    env = next((r["env"] for r in rows if r.get("env")), {})
    machine = env.get("gpu") or env.get("cpu_model", "?")
    lines = ["# Training step: forward + backward + AdamW", "",
             f"Machine: {machine} (driver {env.get('gpu_driver') or '-'}), torch {env.get('torch', '?')}, "
             f"timm {env.get('timm', '?')}, commit {env.get('git_commit', '?')}. Each cell: median ms/step, "
             "images/s, peak memory (GPU: allocator peak above the weights; CPU: resident-set rise, in-process), "
             "the epoch time it implies (data loading excluded), and in parentheses the step time over the "
             "attention-free bound's and over exact's, and peak memory over exact's.", ""]
    lines += train_tables(rows)
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["## Not measured", ""] + [f"- {r['attention']} {r['precision']} batch {r['batch']} "
                                            f"{r['resolution']} px: {r['status']}: {r.get('reason', '')}" for r in failed]
    path = out_dir / f"{TRAIN_STEP}.md"
    write_text(path, "\n".join(lines) + "\n")
    return path
