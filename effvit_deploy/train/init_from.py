"""`init_from`: start a variant from a finished run's weights (swap the attention, then fine-tune).

This is the protocol of attention-swap studies: take a ViT trained with exact attention, swap in
another mechanism, fine-tune, and compare against the same fine-tuning of exact itself. Every
tensor the source run and the new model share is copied unchanged; tensors only the new
mechanism has (Linformer projections, the atrous fusion gate, ...) keep their initialisation and
are reported as new; mechanism tensors only the source has are reported as unused. The absolute
position embedding is resampled to the new patch grid when the resolutions differ (timm's
`resample_abs_pos_embed`, as timm does for pretrained weights), and a classifier with another
class count is re-initialised. Any other difference (depth, width, patch size) is an
architecture mismatch: a one-line error naming the tensors.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed
from torch import nn

from ..runs import MODEL_CARD, load_model_card, load_summary, weights_path
from .config import ConfigError

MECHANISM_PART = ".attn."  # tensors under a block's attention may differ between mechanisms


@dataclass
class InitReport:
    """What `init_from_run` did, as written to the run's summary.json (`init_from`)."""

    source: str
    source_attention: str
    source_top1: Any
    loaded: int = 0
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.source} ({self.source_attention})"]
        for name, keys in (("new", self.new), ("unused", self.unused), ("resampled", self.resampled),
                           ("re-initialised", self.reinitialised)):
            if keys:
                parts.append(f"{len(keys)} {name} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
        return "; ".join(parts)


def _source_weights(source: Path) -> Path:
    if not (source / MODEL_CARD).is_file():
        raise ConfigError(
            f"init_from {str(source)!r} is not a finished run (no {MODEL_CARD}): train the source first, "
            "e.g. `effvit-train --config RECIPE --attention exact`, and pass its run directory"
        )
    path = weights_path(source, "best")
    if not path.is_file():
        raise ConfigError(f"init_from {str(source)!r} has no weights ({path.name} missing): let the source run finish or resume it")
    return path


def _names(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def init_from_run(model: nn.Module, source: Union[str, Path]) -> InitReport:
    """Copy the source run's best weights into `model` (a `build_model` ViT); see the module doc."""
    source = Path(source)
    path = _source_weights(source)
    card = load_model_card(source)
    if card.model != model.effvit_spec["model"]:
        raise ConfigError(
            f"init_from {str(source)!r} is a {card.model}, this run builds a {model.effvit_spec['model']}: "
            "use the source run's model and model_kwargs"
        )
    state, own = load_file(str(path)), model.state_dict()
    report = InitReport(str(source), card.attention, (load_summary(source) or {}).get("top1"))
    head = {f"{model.default_cfg.get('classifier', 'head')}.{p}" for p in ("weight", "bias")}
    mismatch, to_load = [], {}
    for key, tensor in state.items():
        if key not in own:
            (report.unused if MECHANISM_PART in key else mismatch).append(key if MECHANISM_PART in key else f"{key} (not in this model)")
        elif own[key].shape == tensor.shape:
            to_load[key] = tensor
        elif key == "pos_embed" and own[key].shape[-1] == tensor.shape[-1]:
            prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
            to_load[key] = resample_abs_pos_embed(tensor, list(model.patch_embed.grid_size), num_prefix_tokens=prefix)
            report.resampled.append(f"{key} {tuple(tensor.shape)} -> {tuple(own[key].shape)}")
        elif key in head:
            report.reinitialised.append(key)
        else:
            mismatch.append(f"{key} {tuple(tensor.shape)} vs {tuple(own[key].shape)}")
    missing = sorted(k for k in own if k not in state)
    mismatch += [f"{k} (not in the source)" for k in missing if MECHANISM_PART not in k]
    if mismatch:
        raise ConfigError(
            f"init_from {str(source)!r}: its architecture does not match this model in {len(mismatch)} tensor(s): "
            f"{_names(mismatch)}; use the source run's model_kwargs (see {source / 'config.yaml'})"
        )
    with torch.no_grad():
        model.load_state_dict(to_load, strict=False)
    report.loaded = len(to_load)
    report.new = [k for k in missing if MECHANISM_PART in k]
    report.unused.sort()
    return report
