"""ONNX export with dynamic batch, height and width through `torch.onnx.export(dynamo=True)`.

Height and width are declared as multiples of the patch size (`patch * Dim`), so one graph
serves every resolution in range, square or not; the legacy TorchScript exporter would bake
the training-size position embedding in (shared/DESIGN.md, pitfalls).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Union

import torch
from torch import nn
from torch.export import Dim

from ..atomic import atomic_path

log = logging.getLogger(__name__)

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18


def dynamic_shapes(patch_size: int, max_batch: int = 64, max_res: int = 4096) -> dict:
    """torch.export dynamic shapes: batch, and H/W as patch-size multiples."""
    max_cells = max(2, max_res // patch_size)
    return {
        "x": {
            0: Dim("batch", min=1, max=max(2, max_batch)),
            2: patch_size * Dim("grid_h", min=1, max=max_cells),
            3: patch_size * Dim("grid_w", min=1, max=max_cells),
        }
    }


def export_onnx(
    model: nn.Module,
    path: Union[str, Path],
    *,
    sample_size: tuple[int, int] = (224, 224),
    max_batch: int = 64,
    max_res: int = 4096,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export `model` (eval mode, fp32) to `path` atomically; returns the path."""
    path = Path(path)
    patch = int(model.patch_embed.patch_size[0])
    model = model.eval()
    sample = torch.randn(2, 3, *sample_size)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (sample,),
            dynamic_shapes=dynamic_shapes(patch, max_batch, max_res),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            verbose=False,
        )
        program.save(str(tmp))
    log.info("exported %s", path)
    return path
