"""The training and evaluation loops, and the pieces one optimizer step needs.

Everything comes from timm as a user of timm's `train.py` would set it up: the optimizer from
`create_optimizer_v2` (AdamW with layer-wise lr decay), the schedule from `create_scheduler_v2`
(cosine with warm-up, stepped per update), `Mixup` + `SoftTargetCrossEntropy` for mixup/cutmix,
`ModelEmaV3` for weight EMA. One epoch = micro-batches with gradient accumulation, AMP autocast
(bf16, or fp16 with a GradScaler), gradient clipping, then per optimizer step: scheduler update,
Performer feature redraw (`redraw_features`, Choromanski et al. 2021) and the EMA update.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..attention import redraw_features
from .config import ConfigError
from .distributed import DistEnv, all_reduce_sum
from .metrics import Progress, topk_correct


class NonFiniteError(RuntimeError):
    """A loss or logits became NaN or infinite: training diverged; nothing of the epoch is saved."""


def divergence_hint(t: "Trainer") -> str:
    """The knobs that stop a divergence, with their current values."""
    lr = t.optimizer.param_groups[-1]["lr"]
    hint = f"lower optim.lr (now {lr:.3g} at this step)"
    hint += ", set clip_grad (now off), e.g. clip_grad=1.0" if not t.clip_grad else f", lower clip_grad (now {t.clip_grad:g})"
    if t.amp_dtype is not None:
        hint += f" or train without AMP (amp.enabled=false; now {str(t.amp_dtype).replace('torch.', '')})"
    return hint


def all_finite(t: "Trainer", value: torch.Tensor) -> bool:
    """True when `value` is finite on every rank (one scalar all-reduce under DDP, so all ranks stop together)."""
    ok = torch.isfinite(value.detach()).all().to(torch.float32)
    if t.env.enabled:
        import torch.distributed as dist

        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok)


@dataclass
class Trainer:
    """The model and everything that updates it; `step` counts optimizer steps over the run."""

    net: nn.Module  # the bare model: weights are saved from it
    model: nn.Module  # what the loop calls: net, or net wrapped by DDP and/or torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: nn.Module
    env: DistEnv
    amp_dtype: Optional[torch.dtype] = None
    scaler: Optional[torch.amp.GradScaler] = None
    ema: Optional[ModelEmaV3] = None
    mixup: Optional[Mixup] = None
    accum_steps: int = 1
    clip_grad: Optional[float] = None
    step: int = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.env.device.type, dtype=self.amp_dtype)

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and saved as best/last: the EMA when enabled."""
        return self.ema.module if self.ema is not None else self.net

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])


def amp_dtype(config: dict[str, Any], device: torch.device) -> Optional[torch.dtype]:
    if not config["amp"]["enabled"]:
        return None
    dtype = getattr(torch, config["amp"]["dtype"])
    if device.type == "cpu" and dtype is torch.float16:
        raise ConfigError("amp.dtype=float16 needs a CUDA GPU; on CPU use amp.dtype=bfloat16 or amp.enabled=false")
    return dtype


def build_trainer(config: dict[str, Any], net: nn.Module, env: DistEnv, updates_per_epoch: int) -> Trainer:
    """Optimizer, schedule, loss, Mixup, EMA, AMP and the DDP/compile wrappers for `net` (on its device)."""
    optim = config["optim"]
    extra = {k: (tuple(optim[k]) if k == "betas" else optim[k]) for k in ("betas", "eps") if optim[k] is not None}
    if optim["opt"].lower() in ("sgd", "momentum", "nesterov", "rmsprop"):
        extra["momentum"] = optim["momentum"]
    optimizer = create_optimizer_v2(
        net, opt=optim["opt"], lr=optim["lr"], weight_decay=optim["weight_decay"],
        layer_decay=optim["layer_decay"], **extra,
    )
    sched = config["sched"]
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=sched["sched"], num_epochs=config["epochs"], warmup_epochs=sched["warmup_epochs"],
        warmup_lr=sched["warmup_lr"], min_lr=sched["min_lr"], cooldown_epochs=sched["cooldown_epochs"],
        step_on_epochs=False, updates_per_epoch=updates_per_epoch,
    )
    aug = config["aug"] or {}
    num_classes = net.num_classes
    mixup_alpha = aug.get("mixup", aug.get("mixup_alpha", 0.0))
    cutmix_alpha = aug.get("cutmix", aug.get("cutmix_alpha", 0.0))
    smoothing = aug.get("label_smoothing", 0.0)
    mixup = None
    if mixup_alpha > 0 or cutmix_alpha > 0 or aug.get("cutmix_minmax") is not None:
        mixup = Mixup(
            mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, cutmix_minmax=aug.get("cutmix_minmax"),
            prob=aug.get("mixup_prob", 1.0), switch_prob=aug.get("mixup_switch_prob", 0.5),
            mode=aug.get("mixup_mode", "batch"), label_smoothing=smoothing, num_classes=num_classes,
        )
        loss_fn: nn.Module = SoftTargetCrossEntropy()
    else:
        loss_fn = nn.CrossEntropyLoss(label_smoothing=smoothing)
    dtype = amp_dtype(config, env.device)
    scaler = torch.amp.GradScaler(env.device.type) if dtype is torch.float16 else None
    ema = None
    if config["ema"]["enabled"]:
        ema = ModelEmaV3(net, decay=config["ema"]["decay"], exclude_buffers=True)
    model = net
    if env.enabled:
        model = DistributedDataParallel(net, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    if config["compile"]:
        model = torch.compile(model)
    return Trainer(
        net=net, model=model, optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn, env=env,
        amp_dtype=dtype, scaler=scaler, ema=ema, mixup=mixup, accum_steps=config["accum_steps"],
        clip_grad=config["clip_grad"],
    )


def _optimizer_step(t: Trainer) -> None:
    if t.scaler is not None:
        if t.clip_grad:
            t.scaler.unscale_(t.optimizer)
            nn.utils.clip_grad_norm_(t.net.parameters(), t.clip_grad)
        t.scaler.step(t.optimizer)
        t.scaler.update()
    else:
        if t.clip_grad:
            nn.utils.clip_grad_norm_(t.net.parameters(), t.clip_grad)
        t.optimizer.step()
    t.optimizer.zero_grad(set_to_none=True)
    t.step += 1
    t.scheduler.step_update(num_updates=t.step)
    redraw_features(t.net, t.step)
    if t.ema is not None:
        t.ema.update(t.net, step=t.step)
        for ema_buffer, buffer in zip(t.ema.module.buffers(), t.net.buffers()):
            ema_buffer.copy_(buffer)  # e.g. Performer features: copied, never averaged


def train_one_epoch(t: Trainer, batches: Iterable, num_batches: int, progress: Progress) -> dict[str, float]:
    """One pass over `batches` of (images, labels, n_bad); returns rank-summed loss/images/bad counts."""
    t.model.train()
    device = t.env.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    images_seen = bad = 0
    t.optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    for i, (images, labels, n_bad) in enumerate(batches):
        bad += int(n_bad)
        if len(labels) == 0:
            continue
        last_micro = (i + 1) % t.accum_steps == 0 or i + 1 == num_batches
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        targets = labels
        if t.mixup is not None:
            if len(labels) % 2:  # timm's Mixup pairs samples: drop one left over by skipped images
                images, labels = images[:-1], labels[:-1]
            images, targets = t.mixup(images, labels)
        sync = t.model.no_sync() if isinstance(t.model, DistributedDataParallel) and not last_micro else contextlib.nullcontext()
        with sync:
            with t.autocast():
                loss = t.loss_fn(t.model(images), targets)
            if not all_finite(t, loss):
                raise NonFiniteError(
                    f"the training loss became {float(loss.detach()):g} at step {i + 1}/{num_batches} of the epoch (optimizer "
                    f"step {t.step}): training diverged; {divergence_hint(t)}"
                )
            scaled = loss / t.accum_steps
            (t.scaler.scale(scaled) if t.scaler is not None else scaled).backward()
        if last_micro:
            _optimizer_step(t)
        loss_sum += loss.detach().double() * len(labels)
        images_seen += len(labels)
        if progress.due(i + 1):
            progress.update(
                i + 1, images_seen * t.env.world_size, loss=loss.item(), lr=t.optimizer.param_groups[-1]["lr"]
            )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    progress.close()
    total_loss, total_images, total_bad = all_reduce_sum(t.env, [loss_sum.item(), images_seen, bad])
    return {
        "train_loss": total_loss / max(total_images, 1),
        "train_images": int(total_images),
        "train_bad_images": int(total_bad),
        "train_s": seconds,
        "lr": t.optimizer.param_groups[-1]["lr"],
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable, env: DistEnv, autocast: Callable[[], contextlib.AbstractContextManager]
) -> dict[str, float]:
    """Top-1/top-5 accuracy and cross-entropy over `batches`, summed exactly over ranks."""
    model.eval()
    start = time.perf_counter()
    loss_sum, top1, top5, count, bad = 0.0, 0, 0, 0, 0
    for images, labels, n_bad in batches:
        bad += int(n_bad)
        if len(labels) == 0:
            continue
        images, labels = images.to(env.device, non_blocking=True), labels.to(env.device, non_blocking=True)
        with autocast():
            logits = model(images)
        loss_sum += float(nn.functional.cross_entropy(logits.float(), labels, reduction="sum"))
        c1, c5 = topk_correct(logits, labels)
        top1, top5, count = top1 + c1, top5 + c5, count + len(labels)
    seconds = time.perf_counter() - start
    loss_sum, top1, top5, count, bad = all_reduce_sum(env, [loss_sum, top1, top5, count, bad])
    if count == 0:
        raise RuntimeError("the validation split yielded no readable image: check it with `effvit-data check DIR`")
    if not math.isfinite(loss_sum):
        raise NonFiniteError(
            f"the validation loss is {loss_sum:g}: the model's logits are not finite (NaN or inf), so its "
            "accuracy means nothing; training diverged: lower optim.lr, set clip_grad or train without AMP"
        )
    return {
        "top1": top1 / count,
        "top5": top5 / count,
        "val_loss": loss_sum / count,
        "val_images": int(count),
        "val_bad_images": int(bad),
        "eval_s": seconds,
    }
