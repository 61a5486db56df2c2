"""The demo's model side: every variant loaded once at start, then one timed prediction per request.

A `Variant` is one run directory (one attention mechanism) with a `Runner` per backend it can
serve (`effvit_deploy.backends.load_runner`; artifacts come from the run's export manifest) and
its PyTorch model for saliency. The timed region is the runner's `run` + `synchronize`, as in the
benchmark: moving the input to the backend (`prepare`) and reading logits back are outside it.

`build_model` tells every attention layer the current patch grid through a module attribute, so
two threads running one PyTorch model at different resolutions would race; each variant holds a
lock around its PyTorch work. ONNX Runtime and TensorRT runs need no lock but take it too, so
latencies are not inflated by a neighbouring request on the same model.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..backends import ArtifactError, BackendUnavailable, Runner, find_artifact, get_backend, load_runner
from ..flops import count_flops
from ..runs import ModelCard, load_run, load_summary, run_name, unfinished_note

log = logging.getLogger(__name__)

AUTO = "auto"
# Fastest first: what `auto` picks among the backends a run has an artifact for.
AUTO_ORDER = ("tensorrt", "onnxruntime-cuda", "openvino", "onnxruntime", "torch")
SERVABLE = AUTO_ORDER
# Every precision some servable backend runs (an artifact of it must exist for that backend).
PRECISIONS = tuple(dict.fromkeys(p for b in SERVABLE for p in get_backend(b).precisions))
TOP_K = 5


class NonFiniteOutput(RuntimeError):
    """A backend returned NaN or infinite logits: nothing is reported as a prediction or accuracy."""


@dataclass
class Prediction:
    """One variant's answer to one image."""

    probs: np.ndarray
    labels: dict[str, float]
    top_index: int
    latency_ms: float
    backend: str


@dataclass
class Variant:
    """One run, loaded once: its card, summary figures, runners by backend and PyTorch model."""

    name: str
    run_dir: Path
    card: ModelCard
    summary: dict[str, Any]
    runners: dict[str, Runner]
    model: nn.Module
    lock: threading.Lock = field(default_factory=threading.Lock)
    _flops: dict[int, float] = field(default_factory=dict)
    _warm: threading.local = field(default_factory=threading.local)

    @property
    def attention(self) -> str:
        return self.card.attention

    @property
    def top1(self) -> Optional[float]:
        value = self.summary.get("top1")
        return None if value is None else float(value)

    def gflops(self, resolution: int) -> float:
        """Forward GFLOPs per image at `resolution` (counted once per resolution, then cached)."""
        if resolution not in self._flops:
            with self.lock:
                self._flops[resolution] = count_flops(self.model, resolution) / 1e9
        return self._flops[resolution]

    def pick_backend(self, choice: str) -> str:
        """The loaded backend that serves `choice` ("auto": the fastest loaded one)."""
        if choice == AUTO:
            return next(b for b in AUTO_ORDER if b in self.runners)
        if choice not in self.runners:
            loaded = ", ".join(self.runners)
            raise BackendUnavailable(
                f"{self.name} has no {choice} model loaded (loaded: {loaded}); export it with "
                f"`effvit-export {self.run_dir}` and restart the demo with --backend auto"
            )
        return choice

    def preprocess(self, image: Image.Image, resolution: int) -> torch.Tensor:
        """[1, 3, r, r] float32: the run's own evaluation transform at the chosen resolution."""
        from ..data import eval_transform

        transform = eval_transform(replace(self.card, img_size=resolution))
        return transform(image).unsqueeze(0).float()

    def predict(self, x: torch.Tensor, backend: str) -> Prediction:
        """Top-5 of one preprocessed image on one backend, with the latency of the model call.

        The first call in a thread at a given backend and input shape runs once untimed: a thread's
        first PyTorch/OpenMP call and a backend's first call at a new shape pay one-off set-up
        costs (measured here: several times a warm call) that are not the model's latency.
        """
        backend = self.pick_backend(backend)
        runner = self.runners[backend]
        seen = self._warm.__dict__.setdefault("seen", set())
        with self.lock:
            feed = runner.prepare(x.numpy())
            if (backend, tuple(x.shape)) not in seen:
                runner.run(feed)
                runner.synchronize()
                seen.add((backend, tuple(x.shape)))
            start = time.perf_counter()
            out = runner.run(feed)
            runner.synchronize()
            latency = time.perf_counter() - start
        logits = runner.to_numpy(out).astype(np.float64)[0]
        if not np.isfinite(logits).all():
            raise NonFiniteOutput(f"{self.name} on {backend} returned NaN or infinite logits for this image: "
                                  "no prediction is shown; re-export the run, or serve it with --backend torch")
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        names = self.card.class_names or [str(i) for i in range(len(probs))]
        top = np.argsort(-probs)[:TOP_K]
        return Prediction(
            probs=probs,
            labels={names[i]: float(probs[i]) for i in top},
            top_index=int(top[0]),
            latency_ms=latency * 1e3,
            backend=backend,
        )

    def with_model(self, fn: Callable[[nn.Module], Any]) -> Any:
        """Run `fn(model)` on the PyTorch model under this variant's lock (saliency, FLOPs)."""
        with self.lock:
            return fn(self.model)


def validation_accuracy(variant: Variant, backend: str = AUTO, limit: Optional[int] = 200) -> tuple[float, int]:
    """(top-1, images) of one served backend on the run's validation subset of `limit` images,
    measured by `evaluation.top1_of` as export and bench measure theirs (the same images for a limit).

    Raises:
        NonFiniteOutput: the backend returned NaN or infinite logits.
        ValueError: no validation image could be read.
    """
    from ..evaluation import NonFiniteLogits, top1_of

    runner = variant.runners[variant.pick_backend(backend)]
    with variant.lock:
        try:
            result = top1_of(lambda images: runner(images.numpy()), variant.card, limit, batch_size=16)
        except NonFiniteLogits as exc:
            raise NonFiniteOutput(f"{variant.run_dir}: {runner.backend} returned NaN or infinite logits on "
                                  "validation images: its accuracy is not a number") from exc
        except ValueError as exc:
            raise ValueError(f"{variant.run_dir}: {exc}") from exc
    return result.top1, result.images


def servable_backends(run_dir: Union[str, Path], precision: str = "fp32") -> list[str]:
    """Backends in AUTO_ORDER that can run here and have an artifact of `precision` for this run."""
    usable = []
    for backend in AUTO_ORDER:
        record = get_backend(backend)
        if precision not in record.precisions or record.status() is not None:
            continue
        if record.artifact is not None:
            try:
                find_artifact(run_dir, record.artifact, precision)
            except FileNotFoundError:
                continue
            except ArtifactError as err:  # stale, modified or escaping: never served, said once
                log.warning("%s: not serving %s: %s", run_dir, backend, err)
                continue
        usable.append(backend)
    return usable


def load_variant(run_dir: Union[str, Path], backend: str = AUTO, precision: str = "fp32") -> Variant:
    """Load one run for `backend` ("auto": every servable backend) and warm each runner up once.

    An explicit backend that cannot serve this run raises with the reason (ArtifactError for a
    stale, modified or escaping artifact: `backends.check_artifact`). "auto" loads what it can,
    never a stale artifact: a backend whose artifact does not load or run (a truncated model.onnx, an engine for
    another GPU) is skipped with a warning and the next one in AUTO_ORDER serves, down to PyTorch
    (at fp32 when the run's weights have no `precision` runner).
    """
    run_dir = Path(run_dir)
    model, card = load_run(run_dir)
    note = unfinished_note(run_dir)
    if note:
        log.warning("%s", note)
    model = model.to("cuda" if torch.cuda.is_available() else "cpu")
    if backend == AUTO:
        wanted = [(name, precision) for name in servable_backends(run_dir, precision)]
        if all(name != "torch" for name, _ in wanted):
            wanted.append(("torch", "fp32"))
    elif backend in SERVABLE:
        wanted = [(backend, precision)] + ([("torch", "fp32")] if backend != "torch" else [])
    else:
        raise ValueError(f"unknown demo backend {backend!r}; valid: auto, {', '.join(SERVABLE)}")
    warmup = np.zeros((1, 3, card.img_size, card.img_size), dtype=np.float32)
    runners: dict[str, Runner] = {}
    for name, prec in wanted:
        try:
            runner = load_runner(run_dir, name, prec)
            runner(warmup)
        except Exception as err:  # noqa: BLE001 - any unreadable artifact: fall back to the next backend
            if backend != AUTO and name == backend and isinstance(err, ArtifactError):
                raise
            if backend != AUTO and name == backend:
                raise BackendUnavailable(f"{run_dir}: backend {name} cannot serve this run: {err}") from None
            log.warning("%s: skipping backend %s: %s", run_dir, name, str(err).splitlines()[0] if str(err) else type(err).__name__)
            continue
        runners[name] = runner
    if not runners:
        raise BackendUnavailable(f"{run_dir}: no backend could load this run (see the warnings above)")
    return Variant(
        name=card.attention,
        run_dir=run_dir,
        card=card,
        summary=load_summary(run_dir) or {},
        runners=runners,
        model=model,
    )


def load_variants(run_dirs: Sequence[Union[str, Path]], backend: str = AUTO, precision: str = "fp32") -> list[Variant]:
    """One Variant per run; names are the attention mechanism, suffixed with the run name when two runs share one."""
    if not run_dirs:
        raise ValueError("no run directories given: pass one or more runs/NAME directories made by effvit-train")
    variants = [load_variant(d, backend, precision) for d in run_dirs]
    counts: dict[str, int] = {}
    for v in variants:
        counts[v.name] = counts.get(v.name, 0) + 1
    for v in variants:
        if counts[v.name] > 1:
            v.name = f"{v.name} ({run_name(v.run_dir)})"
    return variants


def resolution_choices(cards: Sequence[ModelCard], low: float = 0.5, high: float = 2.0) -> list[int]:
    """Square input sizes every model takes: multiples of the (common) patch size from half to
    twice the largest training resolution, the training resolutions always included."""
    step = math.lcm(*(int(c.patch_size) for c in cards))
    train = sorted({int(c.img_size) for c in cards})
    first = max(step, int(math.ceil(min(train) * low / step)) * step)
    last = int(max(train) * high // step) * step
    return sorted(set(range(first, last + 1, step)) | {t for t in train if t % step == 0})
