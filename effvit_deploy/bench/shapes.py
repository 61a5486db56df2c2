"""Shape-only subjects: untrained run directories for a timm model x attention variants.

Latency, memory and FLOPs depend on shapes, not weights, so the scaling study needs no trained
runs: `shape_runs("vit_small_patch16_224", ["exact", ...], cache)` writes one complete run
per variant (effvit_deploy.runs.write_run; the card's empty `data` marks it untrained, so
accuracy is reported as not applicable) and exports the artifacts the benchmarked backends read
(ONNX, OpenVINO IR: effvit_deploy.export.export_run). Existing runs and artifacts are reused.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from ..atomic import write_text
from ..attention import ATTENTIONS
from ..backends import MANIFEST
from ..models import build_model
from ..runs import MODEL_CARD, ModelCard, write_run
from ..stamps import is_current, write_stamp

log = logging.getLogger(__name__)


def parse_attentions(spec: Union[str, Sequence[str]]) -> list[str]:
    """"all" or a comma list -> attention names, checked against the registry."""
    names = [a.strip() for a in spec.split(",")] if isinstance(spec, str) else list(spec)
    if names == ["all"]:
        return list(ATTENTIONS)
    unknown = [a for a in names if a not in ATTENTIONS]
    if unknown:
        raise ValueError(f"unknown attention(s) {', '.join(unknown)}; valid: all, {', '.join(ATTENTIONS)}")
    return names


def shape_run(model_name: str, attention: str, cache_dir: Union[str, Path], num_classes: int = 1000,
              **kwargs: Any) -> Path:
    """An untrained, loadable run of `model_name` with `attention` (seed 0), made once; `kwargs`
    go to `build_model` (mechanism and timm arguments, e.g. depth=2, landmarks=8) and, with a
    non-default class count, name the run apart (a short hash) so a cache never mixes shapes."""
    asked = {**kwargs, **({"num_classes": num_classes} if num_classes != 1000 else {})}
    suffix = "-" + hashlib.sha1(json.dumps(asked, sort_keys=True).encode()).hexdigest()[:8] if asked else ""
    run_dir = Path(cache_dir) / f"{model_name}-{attention}{suffix}"
    if (run_dir / MODEL_CARD).is_file() and (run_dir / "checkpoints" / "best.safetensors").is_file():
        return run_dir
    torch.manual_seed(0)
    model = build_model(model_name, attention=attention, num_classes=num_classes, **kwargs)
    card = ModelCard.for_model(model, img_size=int(model.patch_embed.img_size[0]), data={})
    write_run(run_dir, model, card)
    return run_dir


EXPORT_STAMP = "bench-export.json"


def _covers(done: dict[str, Any], wanted: Mapping[str, Any]) -> bool:
    """An earlier export serves a request for fewer formats and precisions and a smaller `max_res`."""
    return (set(wanted["formats"]) <= set(done.get("formats", ["onnx"]))
            and set(wanted["precisions"]) <= set(done.get("precisions", ())) and done.get("max_res", 0) >= wanted["max_res"])


def shape_runs(
    model_name: str,
    attentions: Sequence[str],
    cache_dir: Union[str, Path],
    *,
    formats: Sequence[str] = (),
    precisions: Sequence[str] = ("fp32",),
    min_res: Optional[int] = None,
    max_res: int = 1024,
    max_batch: int = 32,
    num_classes: int = 1000,
    build_kwargs: Optional[dict[str, dict[str, Any]]] = None,
) -> list[Path]:
    """One untrained run per attention variant under cache_dir, exported to `formats` (e.g.
    ("onnx", "openvino"); none by default). `build_kwargs` maps an attention name (or "*", for
    every variant) to `build_model` arguments, e.g. {"*": {"depth": 2}, "nystrom": {"landmarks": 8}}."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_text(cache_dir / ".gitignore", "*\n")
    build_kwargs = build_kwargs or {}
    runs = [shape_run(model_name, a, cache_dir, num_classes, **{**build_kwargs.get("*", {}), **build_kwargs.get(a, {})})
            for a in parse_attentions(attentions)]
    if formats:
        from ..export import export_run

        for run_dir in runs:
            wanted = {"formats": list(formats), "precisions": list(precisions), "max_res": max_res}
            if not is_current(run_dir / EXPORT_STAMP, wanted, covers=_covers, outputs=[run_dir / "export" / MANIFEST]):
                log.info("exporting %s to %s (max %d px)", run_dir.name, ", ".join(formats), max_res)
                export_run(run_dir, formats=tuple(formats), precisions=tuple(precisions),
                           min_res=min_res, max_res=max_res, max_batch=max_batch, verify=False, force=True)
                write_stamp(run_dir / EXPORT_STAMP, wanted)
    return runs
