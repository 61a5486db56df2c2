"""The skeleton every attention mechanism shares: a drop-in for `timm.layers.Attention`.

A mechanism subclasses `TimmAttention` and implements `attend(q, k, v)`; the constructor,
the `qkv`/`q_norm`/`k_norm`/`norm`/`proj` submodules and the token reshapes are timm's, so a
pretrained timm ViT's weights load unchanged (timm/layers/attention.py).
"""
from __future__ import annotations

import contextlib
import functools
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional, Union

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

Grid = tuple[int, int]
Size = Union[int, torch.SymInt, torch.Tensor]


def size_min(a: Size, b: Size) -> Size:
    """min(a, b) of two sizes, wherever sizes are symbolic: ints and SymInts (eager,
    torch.export, torch.compile) via `torch.sym_min`, 0-dim tensors (`torch.jit.trace` records
    sizes as tensors) via `torch.minimum`. Registered with `torch.fx.wrap`, so FX symbolic tracing
    (and torchvision's create_feature_extractor) records it as one call instead of branching on a
    traced value. Modules that import it must also call `torch.fx.wrap("size_min")`. Plain ints
    take Python's min: torch.compile before torch 2.12 breaks the graph on a `torch.sym_min` that
    returns an int."""
    if isinstance(a, int) and isinstance(b, int):
        return min(a, b)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.minimum(torch.as_tensor(a), torch.as_tensor(b))
    return torch.sym_min(a, b)


torch.fx.wrap("size_min")


def size_max(a: Size, b: Size) -> Size:
    """max(a, b) of two sizes, symbolic or not: `size_min`'s counterpart."""
    if isinstance(a, int) and isinstance(b, int):
        return max(a, b)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.maximum(torch.as_tensor(a), torch.as_tensor(b))
    return torch.sym_max(a, b)


torch.fx.wrap("size_max")


def exporting() -> bool:
    """True while torch.export traces a graph (ONNX and TensorRT export), False in eager and inside
    torch.compile: the flag torch.export sets while it traces, which is what
    `torch.compiler.is_exporting()` returns outside Dynamo. Inside a torch.compile graph torch
    2.11's Dynamo folds `is_exporting()` to True (torch 2.14 reads the flag), so with it every
    compiled atrous model took the exported forms there: inductor's CPU code generation refused
    its truncating index divisions (`index_div`), and on CUDA it would have run the window
    partition instead of FlexAttention. Falls back to `is_exporting()` on a torch without the
    flag."""
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    return torch.compiler.is_exporting() if flag is None else bool(flag)


def index_div(x: torch.Tensor, n: Size) -> torch.Tensor:
    """x // n for a non-negative integer tensor x (indices, coordinates) and a size n (int or
    symbolic). Truncating under torch.export (ONNX, TensorRT: floor division exports a sign test,
    a boolean Equal, that TensorRT cannot parse); floor everywhere else, equal for such x:
    inductor bounds a truncating division by a float range, and its CPU code generation then
    refuses an index computed from one (torch 2.14: `AssertionError: (VR[-56.0, 251.0],
    VR[-int_oo, -1])` on atrous's window layout)."""
    return torch.div(x, n, rounding_mode="trunc" if exporting() else "floor")


def refuse_masks(x: torch.Tensor, attn_mask: Optional[torch.Tensor], is_causal: bool, mechanism: str) -> torch.Tensor:
    """x itself, after refusing an attention mask or causal attention for a mechanism without
    them. Registered with `torch.fx.wrap`, so in an FX graph (where the mask arguments are
    traced placeholders) the check runs when the graph runs; its output feeds the layer, so
    dead-code elimination keeps it.

    Raises:
        ValueError: a mask was given.
    """
    if attn_mask is not None or is_causal:
        raise ValueError(
            f"{mechanism} does not support attention masks or causal attention; "
            "use attention='exact' for masked attention"
        )
    return x


torch.fx.wrap("refuse_masks")


def fp32_region(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """A context that turns autocast off on x's device, so the maths inside run in the dtype of
    their inputs (float32 once cast). A no-op where autocast has no meaning: FX proxies (their
    device is itself traced) and devices autocast does not know (meta)."""
    if isinstance(x, torch.fx.Proxy) or x.device.type not in ("cpu", "cuda", "xpu", "mps", "hpu"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=x.device.type, enabled=False)


#: fused attention kernels (`F.scaled_dot_product_attention`'s CPU and CUDA back ends)
_ATTENTION_KERNELS = frozenset({
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
})


def _keep_attention_kernels(ctx, func, *args, **kwargs) -> CheckpointPolicy:
    """Selective-checkpoint policy: keep the fused attention kernels' outputs, recompute
    everything else (pads, concatenations, small matrix work) in backward."""
    kept = getattr(func, "overloadpacket", None) is not None and func.overloadpacket.__name__ in _ATTENTION_KERNELS
    return CheckpointPolicy.MUST_SAVE if kept else CheckpointPolicy.PREFER_RECOMPUTE


def recompute_in_backward(fn: Callable[..., torch.Tensor], *args: torch.Tensor, keep_attention: bool = True) -> torch.Tensor:
    """fn(*args), where autograd keeps only fn's inputs and the outputs of its fused attention
    kernels (`F.scaled_dot_product_attention`) for backward and recomputes the rest there
    (`torch.utils.checkpoint` with a selective policy): padded or concatenated [N, width] copies
    of q, k, v cost one cheap write to rebuild but as much memory as q itself to keep.
    `keep_attention=False` for a region without attention kernels: a plain checkpoint, without
    the selective policy's per-op Python dispatch. Gradients are unchanged. Plain `fn(*args)`
    when nothing is recorded for backward (inference, no input requiring grad), inside traced
    graphs (FX, `torch.jit.trace`, ONNX export), which only run forward, and under
    `torch.compile`, whose partitioner already recomputes such cheap ops.
    """
    if (not torch.is_grad_enabled() or isinstance(args[0], torch.fx.Proxy) or torch.jit.is_tracing()
            or torch.jit.is_scripting() or torch.compiler.is_compiling() or not any(a.requires_grad for a in args)):
        return fn(*args)
    if not keep_attention:
        return checkpoint(fn, *args, use_reentrant=False)
    context = functools.partial(create_selective_checkpoint_contexts, _keep_attention_kernels)
    return checkpoint(fn, *args, use_reentrant=False, context_fn=context)


class TimmAttention(nn.Module):
    """Multi-head self-attention with timm's constructor and parameter names.

    Subclasses mix values with `attend(q, k, v, grid)`. The patch grid (H, W) of the input being
    processed travels with the forward as an argument, never as module state, so gradient
    checkpoint recompute, a changed patch size, input padding and graph tracing all see the grid
    that belongs to the tokens (`effvit_deploy.models` passes it from each block); the prefix
    (class and register) tokens are the first `N - H * W` tokens. Mechanisms that need the grid
    (Linformer's resampled projection, atrous windows) raise when it is missing.
    """

    supports_masks = False
    # Facts about a mechanism that the other stages read from its class (one place each):
    #: rank in every table and plot (exact first, then the mechanisms by the year of their paper)
    display_rank: int = 99
    #: whether an fp16 export keeps this mechanism's attention nodes in fp32 (its normalisers or
    #: landmark kernels leave fp16's range on a trained model's activations; export/precision.py)
    computes_in_fp32: bool = False
    #: constructor settings that fit a 4x4 patch grid (64 px, patch 16): the tests' tiny models
    tiny_settings: Mapping[str, Any] = MappingProxyType({})

    @classmethod
    def error_budgets(cls, grid: int) -> list[dict[str, Any]]:
        """Constructor settings (budgets) for the approximation-error table of a model trained
        on a grid x grid patch grid (14 for ViT-S/16 at 224 px), smallest budget first; empty
        for the exact reference. Budgets that grow with the grid end at the mechanism's exact
        limit (effvit_deploy.approximation)."""
        return []

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        scale_norm: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: Optional[type[nn.Module]] = None,
        attn_head_dim: Optional[int] = None,
        dim_out: Optional[int] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if attn_head_dim is None and dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if (qk_norm or scale_norm) and norm_layer is None:
            raise ValueError("qk_norm and scale_norm need a norm_layer")
        self.num_heads = num_heads
        self.head_dim = attn_head_dim or dim // num_heads
        self.attn_dim = num_heads * self.head_dim
        self.scale = self.head_dim**-0.5

        self.qkv = nn.Linear(dim, self.attn_dim * 3, bias=qkv_bias, **dd)
        self.q_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = norm_layer(self.attn_dim, **dd) if scale_norm else nn.Identity()
        self.proj = nn.Linear(self.attn_dim, dim_out or dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: Optional[Grid]) -> torch.Tensor:
        """Mix values: q, k, v are [B, heads, N, head_dim], grid the (H, W) patch grid or None;
        returns [B, heads, N, head_dim]."""
        raise NotImplementedError

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
        grid: Optional[Grid] = None,
    ) -> torch.Tensor:
        """x [B, N, dim] -> [B, N, dim_out]; `grid` is the (H, W) patch grid of x's patch tokens."""
        if self.supports_masks:
            masked = attn_mask is not None or is_causal
        else:
            x, masked = refuse_masks(x, attn_mask, is_causal, type(self).__name__), False
        B, N, _ = x.shape
        q, k, v = self.project_qkv(x)
        if masked:
            x = self.attend(q, k, v, grid, attn_mask=attn_mask, is_causal=is_causal)
        else:
            x = self.attend(q, k, v, grid)
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        x = self.proj(x)
        return self.proj_drop(x)

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v [B, heads, N, head_dim] of tokens x [B, N, dim], q and k normalised if qk_norm."""
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def patch_grid(self, num_tokens: int, grid: Optional[Grid]) -> tuple[int, int, int]:
        """(H, W, num_prefix_tokens) of an input of `num_tokens` tokens on patch grid `grid`.

        Raises:
            RuntimeError: the grid is unknown (None).
        """
        if grid is None:
            raise RuntimeError(
                f"{type(self).__name__} needs the patch grid: build the model with "
                "effvit_deploy.build_model, or call the layer as `layer(x, grid=(H, W))`"
            )
        H, W = grid
        return H, W, num_tokens - H * W
