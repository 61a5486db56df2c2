"""Attention mechanisms, each a drop-in for `timm.layers.Attention`, by registry name.

`ATTENTIONS` lists the trainable mechanisms ("all" in effvit-train and effvit-bench);
`REFERENCES` the reference mechanisms, built, exported and benchmarked by name but never trained
("attention-free": `NoTokenMixing`, the benchmark's bound); `REGISTRY` is both, every name
`build_model` accepts."""
from .atrous import AtrousAttention
from .base import TimmAttention
from .exact import ExactAttention
from .linformer import LinformerAttention
from .no_mixing import NoTokenMixing
from .nystrom import NystromAttention
from .performer import PerformerAttention, redraw_features

ATTENTIONS: dict[str, type[TimmAttention]] = {
    "exact": ExactAttention,
    "linformer": LinformerAttention,
    "performer": PerformerAttention,
    "nystrom": NystromAttention,
    "atrous": AtrousAttention,
}
ATTENTION_FREE = "attention-free"
REFERENCES: dict[str, type[TimmAttention]] = {ATTENTION_FREE: NoTokenMixing}
REGISTRY: dict[str, type[TimmAttention]] = {**ATTENTIONS, **REFERENCES}

__all__ = [
    "ATTENTIONS",
    "ATTENTION_FREE",
    "AtrousAttention",
    "ExactAttention",
    "LinformerAttention",
    "NoTokenMixing",
    "NystromAttention",
    "PerformerAttention",
    "REFERENCES",
    "REGISTRY",
    "TimmAttention",
    "redraw_features",
]
