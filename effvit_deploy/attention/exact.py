"""Exact softmax attention through `F.scaled_dot_product_attention` (Vaswani et al. 2017).

The reference every approximation is measured against; with the same weights it gives the
same outputs as `timm.layers.Attention`, and it alone accepts attention masks.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .base import TimmAttention


class ExactAttention(TimmAttention):
    """Softmax attention over all N tokens: O(N^2) time, O(N) memory with fused kernels."""

    display_rank = 0

    supports_masks = True

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        grid: Optional[tuple[int, int]] = None,
        attn_mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        return F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attn_mask,
            dropout_p=self.attn_drop.p if self.training else 0.0,
            is_causal=is_causal,
        )
