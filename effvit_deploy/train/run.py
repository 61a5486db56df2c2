"""`train(config, run_dir)`: one recipe, one attention variant, one run directory.

Read top to bottom it is the recipe (as torchvision's references/classification/train.py):
check everything that can be wrong before the first step (recipe keys, data folders, the patch
size, pretrained shapes), build data, model and trainer, resume if asked, then per epoch train,
evaluate, write metrics and an atomic checkpoint. Rank 0 writes; other DDP ranks wait.
`train_all` runs several variants into sibling directories `OUT/NAME-ATTENTION`.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import shutil
import statistics
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import timm
import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..atomic import remove_stale_temps, write_json, write_text
from ..attention import ATTENTIONS
from ..data import GENERATED, DataSpec, build_datasets, collate_skip_bad, usable_spec
from ..flops import count_flops, count_params
from ..models import build_model
from ..runs import SUMMARY, ModelCard, load_summary, save_model_card, save_weights
from . import distributed
from .checkpoint import PREVIOUS_FILE, STATE_FILE, load_state, quarantine, rng_state, save_state, set_rng_state
from .config import ConfigError, dump_config, load_config, model_arguments, validate
from .engine import NonFiniteError, build_trainer, evaluate, train_one_epoch
from .init_from import init_from_run
from .metrics import Progress, append_jsonl, peak_memory, read_jsonl, reset_peak_memory

CONFIG_FILE = "config.yaml"
INIT_FILE = "init_from.json"  # what init_from loaded and the swapped model's accuracy before fine-tuning
METRICS_FILE = "metrics.jsonl"
# Keys that may change when a run is resumed; any other difference is refused.
RESUMABLE_CHANGES = ("epochs", "log_interval", "num_workers", "compile")
SUMMARY_FIELDS = (
    "top1", "top5", "train_s_per_epoch", "eval_s", "images_per_s", "peak_mem_bytes", "peak_mem_kind",
    "gflops", "params", "attention", "model", "epochs", "best_epoch", "bad_images_skipped", "device",
)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def check_resolution(config: dict[str, Any]) -> dict[str, Any]:
    """The timm pretrained config (mean/std/interpolation/crop); errors when the patch does not divide img_size."""
    kwargs = {k: v for k, v in model_arguments(config).items() if k in config["model_kwargs"] or k == "img_size"}
    if config["model"] not in timm.list_models():
        build_model(config["model"])  # raises the clear "unknown timm model" error
    try:
        with torch.device("meta"):
            probe = timm.create_model(config["model"], pretrained=False, **kwargs)
    except (AssertionError, TypeError, ValueError) as exc:
        raise ConfigError(f"{config['model']} cannot be built with model_kwargs {config['model_kwargs']}: {exc}") from None
    patch = tuple(probe.patch_embed.patch_size)
    size = config["img_size"]
    if size % patch[0] or size % patch[1]:
        lower, upper = size // patch[0] * patch[0], (size // patch[0] + 1) * patch[0]
        raise ConfigError(
            f"img_size={size} is not a multiple of the patch size {patch[0]}: use img_size={lower or upper} "
            f"or {upper}, or change model_kwargs.patch_size"
        )
    return probe.pretrained_cfg


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _check_resumable(saved: dict[str, Any], config: dict[str, Any], source: Path) -> None:
    """Refuse to resume when the config differs from the one recorded in the checkpoint `source`
    (other than keys in RESUMABLE_CHANGES), naming each changed key with both values."""
    a, b = _flatten(saved), _flatten(config)
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k.split(".")[0] not in RESUMABLE_CHANGES)
    if changed:
        diffs = ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:6]) + (", ..." if len(changed) > 6 else "")
        raise ConfigError(
            f"cannot resume from {source}: the config differs from the one it was trained with ({diffs}); "
            "resume with the same recipe and overrides, or start a new run with --redo or another --name"
        )


def data_identity(spec: DataSpec, class_names: Sequence[str], train_ds, val_ds) -> dict[str, Any]:
    """What a checkpoint records of its data: the spec, the classes, the split sizes and, for a
    folder, a SHA-256 over every (relative path, label) so added, removed or relabelled files show."""
    identity: dict[str, Any] = {
        "spec": spec.to_dict(), "classes": list(class_names), "train_images": len(train_ds), "val_images": len(val_ds),
    }
    if hasattr(train_ds, "samples"):
        digest = hashlib.sha256()
        for split, ds in (("train", train_ds), ("val", val_ds)):
            for path, label in ds.samples:
                digest.update(f"{split}\0{Path(path).relative_to(ds.root)}\0{label}\n".encode())
        identity["files_sha256"] = digest.hexdigest()
    return identity


def _check_same_data(saved: dict[str, Any], current: dict[str, Any], source: Path) -> None:
    changed = [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if changed:
        raise ConfigError(
            f"cannot resume from {source}: the data differ from what it was trained on ({', '.join(changed)} changed); "
            "restore the data set as it was, or start a new run with --redo or another --name"
        )


def _loaders(config, env, train_ds, val_ds) -> tuple[DataLoader, DataLoader, DistributedSampler]:
    world = env.world_size
    batch = config["batch_size"]
    eval_batch = config["eval_batch_size"] or batch
    if batch % world or eval_batch % world:
        raise ConfigError(f"batch_size={batch} and eval_batch_size={eval_batch} must be multiples of the {world} processes")
    per_rank = batch // world
    if len(train_ds) < batch:
        raise ConfigError(f"the train split has {len(train_ds)} images, fewer than one batch of {batch}: lower batch_size")
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=env.rank, shuffle=True, seed=config["seed"])
    common = {
        "num_workers": config["num_workers"], "collate_fn": collate_skip_bad, "pin_memory": env.device.type == "cuda",
    }
    train_loader = DataLoader(train_ds, batch_size=per_rank, sampler=sampler, drop_last=True, **common)
    val_loader = DataLoader(
        val_ds, batch_size=eval_batch // world, sampler=distributed.ShardSampler(len(val_ds), env.rank, world), **common
    )
    return train_loader, val_loader, sampler


def summarise(records: list[dict[str, Any]], static: dict[str, Any]) -> dict[str, Any]:
    """summary.json from the per-epoch records: figures of the best epoch, medians of timings."""
    best = max(records, key=lambda r: (r["top1"], -r["epoch"]))
    last = records[-1]
    steady = records[1:] or records  # the first epoch includes warm-up (allocator, caches, compile)
    return {
        "top1": best["top1"],
        "top5": best["top5"],
        "best_epoch": best["epoch"],
        "final_top1": last["top1"],
        "final_top5": last["top5"],
        "train_s_per_epoch": statistics.median(r["train_s"] for r in steady),
        "eval_s": statistics.median(r["eval_s"] for r in steady),
        "images_per_s": statistics.median(r["images_per_s"] for r in steady),
        "peak_mem_bytes": max(r["peak_mem_bytes"] for r in records),
        "peak_mem_kind": last["peak_mem_kind"],
        "bad_images_skipped": last["train_bad_images"] + last["val_bad_images"],
        "epochs": len(records),
        **static,
    }


def train(config: dict[str, Any], run_dir: Union[str, Path], *, resume: bool = False) -> Path:
    """Train one variant as `config` says into `run_dir`; returns run_dir (complete with summary.json).

    `resume=True` continues from checkpoints/last_state.pt (the last complete epoch; the previous
    one when that is unreadable) and, when the run never finished an epoch, starts it afresh.

    Raises NonFiniteError (a RuntimeError) at the first NaN/inf loss or validation logit, and
    OutOfMemory when a batch does not fit, each naming the knob to turn; the last complete
    epoch's checkpoints stay as they were, and a run that had not finished an epoch is removed.
    """
    config = copy.deepcopy(config)
    validate(config)
    run_dir = Path(run_dir)
    fresh = not run_dir.exists()
    threads = torch.get_num_threads()
    try:
        return _train(config, run_dir, resume)
    except Exception as exc:
        if fresh and os.environ.get("RANK", "0") == "0" and not (run_dir / "checkpoints" / STATE_FILE).is_file():
            shutil.rmtree(run_dir, ignore_errors=True)  # no half run: nothing complete was written
        if is_out_of_memory(exc):
            raise OutOfMemory(out_of_memory_advice(config)) from None
        raise
    finally:
        torch.set_num_threads(threads)  # `threads` applies to this run only


class OutOfMemory(RuntimeError):
    """A batch did not fit in memory; the message names the batch size and resolution to lower."""


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's CUDA/MPS out-of-memory error, or the CPU allocator's failure message."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def out_of_memory_advice(config: dict[str, Any]) -> str:
    batch, accum = config["batch_size"], config["accum_steps"]
    if batch > 1:
        fix = (f"lower batch_size (batch_size={batch // 2} accum_steps={accum * 2} keeps the effective batch) "
               "or img_size")
    else:
        fix = "lower img_size"
    return (f"out of memory on {config['device']} at batch_size={batch}, img_size={config['img_size']} "
            f"({config['model']}, {config['attention']}): {fix}, or enable amp; the last complete epoch's "
            "checkpoints are unchanged")


def _train(config: dict[str, Any], run_dir: Path, resume: bool) -> Path:
    ckpt_dir = run_dir / "checkpoints"
    env = distributed.setup(config["device"], config["threads"])
    main = env.is_main

    # 1. Everything that can be wrong, before any training.
    if main:
        for stale in [*remove_stale_temps(run_dir), *remove_stale_temps(ckpt_dir)]:
            print(f"removed {stale}, left by a killed write", flush=True)
    resumable = load_state(ckpt_dir) if resume else None
    state = resumable.state if resumable else None
    if resumable:
        _check_resumable(state["config"], config, resumable.path)
    started = [p for p in (ckpt_dir / STATE_FILE, ckpt_dir / PREVIOUS_FILE, run_dir / SUMMARY) if p.is_file()]
    if not resume and started:
        raise ConfigError(f"{run_dir} already holds a run: pass --resume to continue it, or pick another --name/--out")
    pretrained_cfg = check_resolution(config)
    img_size = config["img_size"]
    norm = {
        "mean": tuple(pretrained_cfg["mean"]), "std": tuple(pretrained_cfg["std"]),
        "interpolation": pretrained_cfg.get("interpolation") or "bicubic",
        "crop_pct": pretrained_cfg.get("crop_pct", 0.875),
    }
    data = {k: v for k, v in config["data"].items() if k not in ("on_bad_image", "on_empty_class")}
    spec = usable_spec(DataSpec.from_dict(data), config["data"]["on_empty_class"])
    train_ds, val_ds, class_names = build_datasets(
        spec, img_size, **norm, aug=config["aug"], on_bad_image=config["data"]["on_bad_image"]
    )
    identity = data_identity(spec, class_names, train_ds, val_ds)
    if resumable:
        _check_same_data(state["data"], identity, resumable.path)
    seed_everything(config["seed"], config["deterministic"])
    try:
        net = build_model(
            config["model"], attention=config["attention"], num_classes=len(class_names),
            pretrained=config["pretrained"], **model_arguments(config),
        )
    except OSError as exc:
        if config["pretrained"] is not True:
            raise
        raise ConfigError(
            f"cannot fetch timm's pretrained weights for {config['model']} ({exc}); offline, download them "
            "elsewhere and pass pretrained=/path/to/weights.safetensors"
        ) from None
    init = init_from_run(net, config["init_from"]) if config["init_from"] else None
    if init is not None and main:
        print(f"[{config['attention']}] init_from: {init.summary()}", flush=True)
    gflops = count_flops(net, img_size) / 1e9
    params = count_params(net)
    net.to(env.device)
    train_loader, val_loader, sampler = _loaders(config, env, train_ds, val_ds)
    updates_per_epoch = math.ceil(len(train_loader) / config["accum_steps"])
    trainer = build_trainer(config, net, env, updates_per_epoch)

    # 2. Resume: weights, optimizer, schedule, EMA, RNGs and data order of the last complete epoch.
    start_epoch, best_top1 = 0, -1.0
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        start_epoch, best_top1 = int(state["epoch"]) + 1, float(state["best_top1"])
        set_rng_state(state["rng"])
        sampler.seed = int(state["data_order"]["sampler_seed"])
        if main:
            for path, reason in resumable.unusable:
                print(f"{reason}; moved aside as {path.name}.corrupt, falling back to {resumable.path.name}", flush=True)
            quarantine(resumable.unusable)
            print(f"resuming {run_dir} after epoch {start_epoch} (step {trainer.step})", flush=True)
    elif resume and main and (run_dir / "checkpoints").is_dir():
        print(f"{run_dir} has no complete epoch to resume from: starting it from scratch", flush=True)

    if init is not None and (state is None or not (run_dir / INIT_FILE).is_file()):
        zero_shot = evaluate(trainer.eval_model, val_loader, env, trainer.autocast)
        if main:
            print(f"[{config['attention']}] epoch 0 (zero-shot swap) top1 {zero_shot['top1']:.4f} "
                  f"top5 {zero_shot['top5']:.4f} (on {zero_shot.get('val_images', 0):,} val images)", flush=True)
            write_json(run_dir / INIT_FILE, {**init.to_dict(), "zero_shot_top1": zero_shot["top1"],
                                             "zero_shot_top5": zero_shot["top5"]})
    if main:
        kept = [r for r in read_jsonl(run_dir / METRICS_FILE) if r["epoch"] < start_epoch]
        write_text(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))
        write_text(run_dir / CONFIG_FILE, dump_config(config))
        card = ModelCard.for_model(
            net, img_size=img_size, class_names=class_names, **norm, data=spec.to_dict() | {"img_size": img_size},
            data_counts={"classes": len(class_names), "train_images": len(train_ds), "val_images": len(val_ds),
                         "excluded_classes": list(spec.exclude_classes)},
        )
        save_model_card(run_dir, card)
    distributed.barrier(env)

    # 3. Epochs.
    reset_peak_memory(env.device)
    epochs = config["epochs"]
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        progress = Progress(
            len(train_loader), f"[{config['attention']}] epoch {epoch + 1}/{epochs}", main, config["log_interval"]
        )
        try:
            stats = train_one_epoch(trainer, train_loader, len(train_loader), progress)
            stats.update(evaluate(trainer.eval_model, val_loader, env, trainer.autocast))
        except NonFiniteError as exc:
            kept = (f"the checkpoints of epoch {epoch} (best top-1 {best_top1:.4f}) are kept unchanged" if epoch
                    else "no checkpoint was written")
            raise NonFiniteError(f"[{config['attention']}] epoch {epoch + 1}/{epochs}: {exc}; {kept}") from None
        mem, mem_kind = peak_memory(env.device)
        record = {
            "epoch": epoch, "step": trainer.step, **stats,
            "images_per_s": stats["train_images"] / stats["train_s"], "peak_mem_bytes": mem, "peak_mem_kind": mem_kind,
        }
        improved = record["top1"] > best_top1
        best_top1 = max(best_top1, record["top1"])
        if main:
            print(
                f"[{config['attention']}] epoch {epoch + 1}/{epochs} loss {record['train_loss']:.4f} "
                f"top1 {record['top1']:.4f} top5 {record['top5']:.4f} (on {record.get('val_images', 0):,} val images) "
                f"{record['images_per_s']:.1f} img/s "
                f"train {record['train_s']:.1f}s eval {record['eval_s']:.1f}s",
                flush=True,
            )
            save_weights(trainer.eval_model, ckpt_dir / "last.safetensors")
            if improved:
                save_weights(trainer.eval_model, ckpt_dir / "best.safetensors")
            append_jsonl(run_dir / METRICS_FILE, record)
            save_state(ckpt_dir, {
                "trainer": trainer.state_dict(), "epoch": epoch, "best_top1": best_top1, "rng": rng_state(),
                "data_order": {"sampler_seed": sampler.seed, "sampler_epoch": epoch},
                "config": config, "data": identity,
            })
        distributed.barrier(env)

    # 4. Summary.
    if main:
        static = {
            "gflops": gflops, "params": params, "attention": config["attention"], "model": config["model"],
            "img_size": img_size, "num_classes": len(class_names), "device": str(env.device),
            "world_size": env.world_size, "ema": bool(config["ema"]["enabled"]),
        }
        if init is not None:
            record = json.loads((run_dir / INIT_FILE).read_text())
            static.update(init_from=record, zero_shot_top1=record["zero_shot_top1"], zero_shot_top5=record["zero_shot_top5"])
        write_json(run_dir / SUMMARY, summarise(read_jsonl(run_dir / METRICS_FILE), static))
    distributed.barrier(env)
    return run_dir


def is_complete(run_dir: Path) -> bool:
    summary = load_summary(run_dir)
    return summary is not None and all(k in summary for k in SUMMARY_FIELDS)


def train_all(
    config_path: Union[str, Path],
    attentions: Union[str, Sequence[str]] = "all",
    out_dir: Union[str, Path] = "runs",
    overrides: Iterable[str] = (),
    *,
    name: Optional[str] = None,
    data: Optional[str] = None,
    redo: bool = False,
    resume: bool = True,
) -> list[Path]:
    """Train each attention variant into OUT/NAME-ATTENTION (NAME defaults to the recipe's stem).

    A variant whose run dir already has a complete summary.json is skipped unless `redo`; an
    incomplete one is resumed from its last epoch (`resume`) or, with `redo`, started afresh.
    `data` is a shorthand for the data block: "digits", "synthetic" or a folder path.
    """
    overrides = list(overrides)
    if attentions == "all":
        attentions = list(ATTENTIONS)
    elif isinstance(attentions, str):
        attentions = [attentions]
    name = name or Path(config_path).stem
    configs = [with_data(load_config(config_path, overrides, attention=a), data) for a in attentions]
    env = distributed.setup(configs[0]["device"], configs[0]["threads"])
    runs = []
    for config in configs:
        run_dir = Path(out_dir) / f"{name}-{config['attention']}"
        if is_complete(run_dir) and not redo:
            if env.is_main:
                print(f"{run_dir}: complete, skipped (redo to train it again)", flush=True)
            runs.append(run_dir)
            continue
        if redo and run_dir.exists() and env.is_main:
            shutil.rmtree(run_dir)
        distributed.barrier(env)
        runs.append(train(config, run_dir, resume=resume and not redo))
    return runs


def with_data(config: dict[str, Any], data: Optional[str]) -> dict[str, Any]:
    """Apply `--data digits|cluttered|synthetic|PATH` to a config (a path becomes an absolute folder root)."""
    if data in GENERATED:
        config["data"].update(name=data, root=None)
    elif data is not None:
        config["data"].update(name="folder", root=str(Path(data).expanduser().resolve()))
    return config
