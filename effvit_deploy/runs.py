"""The run directory contract between stages (docs/ARCHITECTURE.md, "Run directory").

    runs/NAME/
      model.json          ModelCard: how to rebuild the model and feed it (written by train)
      config.yaml         the fully resolved training config
      metrics.jsonl       one JSON object per epoch
      summary.json        final figures (top1, top5, gflops, params, ...)
      checkpoints/        best.safetensors, last.safetensors (+ resumable state, train's own)
      export/             manifest.json and artifacts (written by export)

Later stages read these files, never the training code's internals.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_path, write_json
from .models import build_model

MODEL_CARD = "model.json"
SUMMARY = "summary.json"


@dataclass
class ModelCard:
    """Everything a later stage needs to rebuild a trained model and prepare its input."""

    model: str
    attention: str
    num_classes: int
    img_size: int
    attention_kwargs: dict[str, Any] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    patch_size: int = 16
    data: dict[str, Any] = field(default_factory=dict)
    # What training actually used: classes, train/val image files, class folders left out.
    data_counts: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_model(cls, model: nn.Module, **fields: Any) -> "ModelCard":
        """A card for a model made by `build_model` (its `effvit_spec`) plus the data fields."""
        spec = model.effvit_spec
        model_kwargs = dict(spec["model_kwargs"])
        return cls(
            model=spec["model"],
            attention=spec["attention"],
            num_classes=spec["num_classes"],
            attention_kwargs=dict(spec["attention_kwargs"]),
            model_kwargs=model_kwargs,
            patch_size=int(model.patch_embed.patch_size[0]),
            **fields,
        )

    def build(self) -> nn.Module:
        """The model, untrained, exactly as it was built for training."""
        kwargs = {**self.model_kwargs, **self.attention_kwargs}
        return build_model(self.model, attention=self.attention, num_classes=self.num_classes, **kwargs)


def run_name(run_dir: Union[str, Path]) -> str:
    return Path(run_dir).resolve().name


def save_model_card(run_dir: Union[str, Path], card: ModelCard) -> None:
    write_json(Path(run_dir) / MODEL_CARD, asdict(card))


def load_model_card(run_dir: Union[str, Path]) -> ModelCard:
    path = Path(run_dir) / MODEL_CARD
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a training run directory: {MODEL_CARD} is missing "
            "(create one with `effvit-train`)"
        )
    try:
        raw = json.loads(path.read_text())
        for key in ("mean", "std"):
            raw[key] = tuple(raw[key])
        return ModelCard(**raw)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(
            f"{path} is not a model card ({' '.join(str(exc).split())}): it was damaged or edited; "
            "copy it back from the training run, or train again with effvit-train"
        ) from None


def save_weights(model: nn.Module, path: Union[str, Path]) -> None:
    """safetensors weights, written atomically (shared tensors are cloned, as safetensors needs).

    Raises ValueError, writing nothing, when a floating-point tensor holds NaN or inf: such weights
    never replace a checkpoint.
    """
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"refusing to write {path}: {len(bad)} tensor(s) hold NaN or inf (first: {bad[0]})")
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def weights_path(run_dir: Union[str, Path], which: str = "best") -> Path:
    path = Path(run_dir) / "checkpoints" / f"{which}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no {which} weights in {run_dir}: expected {path}")
    return path


def load_run(run_dir: Union[str, Path], which: str = "best") -> tuple[nn.Module, ModelCard]:
    """(model in eval mode with the run's trained weights, its ModelCard)."""
    card = load_model_card(run_dir)
    model = card.build()
    path = weights_path(run_dir, which)
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except Exception as exc:  # safetensors' own error type, or torch's for mismatched tensors
        raise ValueError(
            f"weights {path} cannot be loaded ({' '.join(str(exc).split())[:200]}): the file is damaged or "
            f"belongs to another model; train the run again, or copy the file back"
        ) from None
    return model.eval(), card


def run_state(run_dir: Union[str, Path]) -> dict[str, Any]:
    """Whether training finished: {"complete", "epochs_done", "epochs"}.

    A run is unfinished when training started it (metrics.jsonl or a resumable state exists) but
    never wrote summary.json: its best weights are those of an epoch before the planned last one.
    Runs written without training (`write_run`) count as complete.
    """
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    done = sum(1 for line in metrics.read_text().splitlines() if line.strip()) if metrics.is_file() else None
    epochs = None
    config = run_dir / "config.yaml"
    if config.is_file():
        import yaml

        try:
            epochs = (yaml.safe_load(config.read_text()) or {}).get("epochs")
        except (yaml.YAMLError, AttributeError):
            epochs = None
    started = metrics.is_file() or (run_dir / "checkpoints" / "last_state.pt").is_file()
    return {"complete": (run_dir / SUMMARY).is_file() or not started, "epochs_done": done, "epochs": epochs}


def unfinished_note(run_dir: Union[str, Path]) -> Optional[str]:
    """One line warning that `run_dir` is an unfinished training run, or None when it is complete."""
    state = run_state(run_dir)
    if state["complete"]:
        return None
    done = state["epochs_done"] or 0
    of = f" of {state['epochs']}" if state["epochs"] else ""
    return (f"{run_dir} is an unfinished training run ({done}{of} epochs done, no summary.json): its weights are "
            "from an epoch before the planned last one; finish it with `effvit-train ... --resume`")


def load_summary(run_dir: Union[str, Path]) -> Optional[dict[str, Any]]:
    path = Path(run_dir) / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None


def write_run(
    run_dir: Union[str, Path],
    model: nn.Module,
    card: ModelCard,
    summary: Optional[dict[str, Any]] = None,
) -> Path:
    """Write a complete, loadable run (card, best and last weights, summary) from a model."""
    run_dir = Path(run_dir)
    save_model_card(run_dir, card)
    for which in ("best", "last"):
        save_weights(model, run_dir / "checkpoints" / f"{which}.safetensors")
    if summary is not None:
        write_json(run_dir / SUMMARY, summary)
    return run_dir
