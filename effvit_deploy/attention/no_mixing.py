"""The reference mechanism without token mixing: `attend(q, k, v) = v`.

An efficient attention mechanism can only shrink the token-mixing step; the q/k/v projection,
the output projection, the LayerNorms, MLP and residuals stay. `NoTokenMixing` keeps all of
those and mixes nothing, so a model built with it is the fastest any mechanism could make that
model: the attention-free bound every speed-up is read against (effvit_deploy/bench/bound.py).

Identity on the values, not zeros: an attention branch returning zeros is dead code that graph
compilers (ONNX Runtime, OpenVINO) prune together with its LayerNorm and projections, which
would time a model smaller than anything a mechanism can produce.

A reference, not a trainable mechanism: registered as "attention-free" in `REFERENCES` (so
`build_model(..., attention="attention-free")` and a run directory naming it work like any
mechanism's) but kept out of `ATTENTIONS` (and so out of "all" in effvit-train and effvit-bench).
"""
from __future__ import annotations

from typing import Optional

import torch

from .base import TimmAttention


class NoTokenMixing(TimmAttention):
    """A token mixer that mixes nothing: the projections of attention without the attention."""

    display_rank = 98  # the bound: after every mechanism

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid=None) -> torch.Tensor:
        return v

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
        grid: Optional[tuple[int, int]] = None,
    ) -> torch.Tensor:
        """x [B, N, dim] -> [B, N, dim]: the qkv projection (all of it, as every mechanism pays
        for it), the value columns taken as they are, then the output projection. The same
        result as `attend` returning v, without the head split/merge reshapes that a mechanism
        needs and no mixing does."""
        values = self.qkv(x)[..., 2 * self.attn_dim :]
        return self.proj_drop(self.proj(self.norm(values)))
