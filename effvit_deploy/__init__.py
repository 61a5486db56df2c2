"""effvit-deploy: Vision Transformers with efficient self-attention, from fine-tuning to deployment."""
from __future__ import annotations

from typing import Any

__version__ = "0.4.0"

__all__ = ["ATTENTIONS", "build_model", "__version__"]


def __getattr__(name: str) -> Any:
    """`ATTENTIONS` and `build_model`, imported on first use (PEP 562): importing the package
    (e.g. an entry point) does not import torch until something needs it."""
    if name == "ATTENTIONS":
        from .attention import ATTENTIONS

        return ATTENTIONS
    if name == "build_model":
        from .models import build_model

        return build_model
    raise AttributeError(f"module 'effvit_deploy' has no attribute {name!r}")
