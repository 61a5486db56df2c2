"""Where each model looked: saliency maps drawn over the image the model saw.

Two views:
- gradient x input (Shrikumar et al. 2016, "Not Just a Black Box", arXiv:1605.01713; compared in
  Ancona et al. 2018, arXiv:1711.06104): |sum over channels of x * d logit_c / d x| for the
  predicted class c. It needs only autograd through the PyTorch model, so it works for every
  attention mechanism alike, whichever backend answered.
- class-token attention: the last block's softmax(q_cls k^T / sqrt(d)) over the patch tokens,
  averaged over heads (as in DINO's attention maps, Caron et al. 2021, arXiv:2104.14294). Only
  exact attention forms that row; Linformer, Performer, Nystrom and atrous attention never
  materialise a token-to-token matrix, so for them `class_token_attention` returns None.
"""
from __future__ import annotations

from typing import Optional, Sequence

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..attention import ExactAttention

GRADIENT = "gradient x input"
CLASS_TOKEN = "class-token attention (exact only)"
OFF = "off"
MODES = (GRADIENT, CLASS_TOKEN, OFF)
DISPLAY_SIZE = 256


def gradient_x_input(model: nn.Module, x: torch.Tensor, class_index: int) -> np.ndarray:
    """[H, W] saliency of `class_index` for one preprocessed image x [1, 3, H, W]."""
    param = next(model.parameters())
    x = x.detach().to(device=param.device, dtype=param.dtype).requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        (grad,) = torch.autograd.grad(logits[0, class_index], x)
    return (grad * x).sum(dim=1)[0].abs().detach().float().cpu().numpy()


def class_token_attention(model: nn.Module, x: torch.Tensor) -> Optional[np.ndarray]:
    """[H, W] (patch grid, upsampled to pixels) class-token attention of the last block, or None
    when that block's mechanism has no explicit attention matrix."""
    attn = model.blocks[-1].attn
    if not isinstance(attn, ExactAttention):
        return None
    captured: list[torch.Tensor] = []
    hook = attn.register_forward_pre_hook(
        lambda module, args, kwargs: captured.append((args[0], kwargs.get("grid"))), with_kwargs=True
    )
    param = next(model.parameters())
    try:
        with torch.inference_mode():
            model(x.to(device=param.device, dtype=param.dtype))
    finally:
        hook.remove()
    tokens, patch_grid = captured[0]
    B, N, _ = tokens.shape
    with torch.inference_mode():
        qkv = attn.qkv(tokens).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        weights = (q[:, :, :1] @ k.transpose(-2, -1) * attn.scale).softmax(dim=-1)  # [B, heads, 1, N]
    gh, gw, prefix = attn.patch_grid(N, patch_grid)
    grid = weights[0, :, 0, prefix:].mean(0).reshape(1, 1, gh, gw).float()
    pixels = F.interpolate(grid, size=tuple(x.shape[-2:]), mode="nearest")
    return pixels[0, 0].cpu().numpy()


def to_image(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The model's input [1, 3, H, W] back as uint8 RGB [H, W, 3] (normalisation undone)."""
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    rgb = (x[0].detach().float().cpu() * s + m).clamp(0, 1)
    return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, saliency: np.ndarray, alpha: float = 0.55, size: int = DISPLAY_SIZE) -> np.ndarray:
    """The saliency map (scaled to its 99th percentile, 'inferno' colours) blended over `image`,
    enlarged to `size` pixels on the long side for display."""
    scale = float(np.percentile(saliency, 99)) or float(saliency.max()) or 1.0
    heat = matplotlib.colormaps["inferno"](np.clip(saliency / scale, 0, 1))[..., :3]
    blended = (1 - alpha) * image.astype(np.float64) / 255 + alpha * heat
    out = Image.fromarray((blended * 255).round().astype(np.uint8))
    factor = size / max(out.size)
    if factor > 1:
        out = out.resize((round(out.width * factor), round(out.height * factor)), Image.Resampling.NEAREST)
    return np.asarray(out)
