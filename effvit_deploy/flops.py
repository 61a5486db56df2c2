"""FLOPs per image with `torch.utils.flop_counter.FlopCounterMode`.

PyTorch counts matmuls, convolutions and the CUDA SDPA kernels, but gives the CPU fused
kernel (`aten._scaled_dot_product_flash_attention_for_cpu`) no formula, so on CPU exact
attention would look free. We register PyTorch's own SDPA formula for it.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

_CPU_SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def _register_cpu_sdpa() -> None:
    from torch.utils.flop_counter import flop_registry

    if _CPU_SDPA in flop_registry:
        return

    @register_flop_formula(_CPU_SDPA)
    def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)


_register_cpu_sdpa()


@torch.no_grad()
def forward_flops(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Forward FLOPs (a multiply-add counts 2) of `module(*inputs)`, run in eval mode."""
    was_training = module.training
    module.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            module(*inputs)
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())


def count_flops(model: nn.Module, height: int = 224, width: int | None = None) -> int:
    """Forward FLOPs for one image of height x width, batch 1."""
    param = next(model.parameters())
    x = torch.zeros(1, 3, height, width or height, device=param.device, dtype=param.dtype)
    return forward_flops(model, x)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
