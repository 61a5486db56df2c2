"""Attention mechanisms, each a drop-in for `timm.layers.Attention`, by registry name.

`ATTENTIONS` lists the trainable mechanisms ("all" in effvit-train and effvit-bench);
`NoTokenMixing`, the reference without token mixing behind the benchmark's attention-free
bound, is exported here but is not one of them."""
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

__all__ = [
    "ATTENTIONS",
    "AtrousAttention",
    "ExactAttention",
    "LinformerAttention",
    "NoTokenMixing",
    "NystromAttention",
    "PerformerAttention",
    "TimmAttention",
    "redraw_features",
]
