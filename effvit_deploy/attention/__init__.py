"""Attention mechanisms, each a drop-in for `timm.layers.Attention`, by registry name."""
from .atrous import AtrousAttention
from .base import TimmAttention
from .exact import ExactAttention
from .linformer import LinformerAttention
from .nystrom import NystromAttention
from .performer import PerformerAttention, redraw_features

ATTENTIONS: dict[str, type[TimmAttention]] = {
    "exact": ExactAttention,
    "linformer": LinformerAttention,
    "performer": PerformerAttention,
    "nystrom": NystromAttention,
    "atrous": AtrousAttention,
}

__all__ = [
    "ATTENTIONS",
    "AtrousAttention",
    "ExactAttention",
    "LinformerAttention",
    "NystromAttention",
    "PerformerAttention",
    "TimmAttention",
    "redraw_features",
]
