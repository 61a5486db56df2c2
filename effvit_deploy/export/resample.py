"""Position-embedding resampling as two matrix products, so every runtime computes it alike.

timm resamples a ViT's absolute position embedding to the input's patch grid with
`F.interpolate(mode="bicubic", antialias=True)`, exported as an ONNX `Resize` (cubic,
antialias). Runtimes implement that op differently: OpenVINO's Resize at sizes other than the
training one gave logits 2.5e-3 to 1.5e-2 (relative) away from ONNX Runtime and PyTorch. During
export the resampling is written instead as `W_h @ P @ W_w^T` (as two 2-D matmuls), with the interpolation matrices
built in the graph from the (dynamic) output size by elementwise ops only, which every runtime
computes identically up to float rounding.

The matrices are PyTorch's own antialiased bicubic (`_upsample_bicubic2d_aa`, the PIL filter):
for output index o, scale = in / out, s = max(scale, 1), centre c = scale * (o + 0.5);
w(o, i) = k((i + 0.5 - c) / s), with k the cubic convolution kernel at a = -0.5 (zero for
|x| >= 2), each row normalised to sum 1 over the input (R. Keys, "Cubic convolution
interpolation for digital image processing", IEEE TASSP 1981; Pillow's `ImagingResample`).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional

import torch
from timm.layers import resample_abs_pos_embed as timm_resample_abs_pos_embed

CUBIC_A = -0.5


def _cubic(x: torch.Tensor) -> torch.Tensor:
    x = x.abs()
    near = ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1
    far = ((CUBIC_A * x - 5 * CUBIC_A) * x + 8 * CUBIC_A) * x - 4 * CUBIC_A
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def aa_bicubic_matrix(out_size, in_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[out_size, in_size] matrix M with `M @ v` = antialiased bicubic resampling of v (1-D)."""
    out_idx = torch.arange(out_size, dtype=dtype)
    in_idx = torch.arange(in_size, dtype=dtype)
    scale = in_size / (out_idx.new_ones(()) * out_size)
    support = torch.clamp(scale, min=1.0)
    centre = scale * (out_idx + 0.5)
    weights = _cubic((in_idx[None, :] + 0.5 - centre[:, None]) / support)
    return weights / weights.sum(dim=1, keepdim=True)


def resample_abs_pos_embed(
    posemb: torch.Tensor,
    new_size: List[int],
    old_size: Optional[List[int]] = None,
    num_prefix_tokens: int = 1,
    interpolation: str = "bicubic",
    antialias: bool = True,
    verbose: bool = False,
    align_corners: Optional[bool] = None,
) -> torch.Tensor:
    """Drop-in for `timm.layers.resample_abs_pos_embed` (bicubic, antialias) by matrix products."""
    if interpolation != "bicubic" or not antialias or align_corners:
        return timm_resample_abs_pos_embed(posemb, new_size, old_size, num_prefix_tokens, interpolation, antialias,
                                           verbose, align_corners)
    if old_size is None:
        side = int((posemb.shape[1] - num_prefix_tokens) ** 0.5)
        old_size = [side, side]
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    h, w = old_size
    rows = aa_bicubic_matrix(new_size[0], h)  # [H, h]
    cols = aa_bicubic_matrix(new_size[1], w)  # [W, w]
    # Two 2-D matmuls (OpenVINO's CPU MatMul wants operands of equal rank, so no broadcasting).
    tall = rows @ grid.float().reshape(h, w * dim)  # [H, w*C]
    tall = tall.reshape(-1, w, dim).permute(1, 0, 2).reshape(w, -1)  # [w, H*C]
    out = (cols @ tall).reshape(cols.shape[0], -1, dim).permute(1, 0, 2)  # [H, W, C]
    out = out.reshape(1, -1, dim).to(posemb.dtype)
    return torch.cat([prefix, out], dim=1) if num_prefix_tokens else out


@contextlib.contextmanager
def portable_resampling() -> Iterator[None]:
    """While exporting, timm's ViT resamples its position embedding with `resample_abs_pos_embed`
    above (the module global timm's `VisionTransformer._pos_embed` calls is swapped back after)."""
    import timm.models.vision_transformer as vit

    original = vit.resample_abs_pos_embed
    vit.resample_abs_pos_embed = resample_abs_pos_embed
    try:
        yield
    finally:
        vit.resample_abs_pos_embed = original
