"""effvit-deploy: Vision Transformers with efficient self-attention, from fine-tuning to deployment."""
from .attention import ATTENTIONS
from .models import build_model

__version__ = "0.3.0"

__all__ = ["ATTENTIONS", "build_model", "__version__"]
