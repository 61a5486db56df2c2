"""How far each approximation is from exact attention on a model's own activations.

For every block of an exact-attention model, the input of its attention layer is captured on
real images; each mechanism, given that block's own qkv/proj weights, attends over the same
input, and the relative error ||approx - exact|| / ||exact|| of the block's attention output is
reported against the block's exact attention in float64. This isolates the approximation
itself from fine-tuning: it is the error a pretrained model sees the moment its attention is
swapped. Each budget is measured in fp32 and under bf16 autocast (`PRECISIONS`), with exact
attention itself as the floor that the precision's rounding sets.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import torch
from torch import nn

from .attention import ATTENTIONS, TimmAttention
from .runs import ModelCard


@dataclass(frozen=True)
class Mechanism:
    """One approximation at one budget, e.g. Mechanism("nystrom", {"landmarks": 32}); label
    "nystrom(landmarks=32)", or the bare name without arguments."""

    attention: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        args = ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v}" for k, v in self.kwargs.items())
        return f"{self.attention}({args})" if args else self.attention


def default_mechanisms(grid: int) -> list[Mechanism]:
    """Budgets to compare on a model trained on a grid x grid patch grid (14 for ViT-S/16 at 224):
    each registered mechanism's `error_budgets(grid)`, in `display_rank` order (both on the
    mechanism's class, effvit_deploy.attention). A budget that two entries give on a small grid
    (atrous windows floored at 2) is listed once."""
    ranked = sorted(ATTENTIONS.items(), key=lambda item: item[1].display_rank)
    mechanisms = [Mechanism(name, budget) for name, cls in ranked for budget in cls.error_budgets(grid)]
    return list({m.label: m for m in mechanisms}.values())


def _swap(
    exact: TimmAttention, mechanism: Mechanism, train_grid: tuple[int, int], attentions: Mapping[str, type[TimmAttention]]
) -> TimmAttention:
    """`mechanism` (a class of `attentions`) with the exact layer's qkv/proj/norm weights and
    configuration."""
    cls = attentions[mechanism.attention]
    kwargs = dict(mechanism.kwargs)
    if "grid_size" in inspect.signature(cls.__init__).parameters:
        kwargs["grid_size"] = train_grid
    layer = cls(
        exact.qkv.in_features, exact.num_heads,
        qkv_bias=exact.qkv.bias is not None,
        qk_norm=not isinstance(exact.q_norm, nn.Identity),
        scale_norm=not isinstance(exact.norm, nn.Identity),
        proj_bias=exact.proj.bias is not None,
        norm_layer=type(exact.q_norm) if not isinstance(exact.q_norm, nn.Identity) else None,
        **kwargs,
    )
    layer.load_state_dict(exact.state_dict(), strict=False)
    return layer.eval()


@torch.no_grad()
def attention_inputs(model: nn.Module, images: torch.Tensor) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    """(tokens [B, N, dim], patch grid (H, W)) that each block's attention layer receives when
    `model` sees `images` (`attention_qkv` turns them into each layer's q, k, v)."""
    layers = [block.attn for block in model.blocks]
    inputs: dict[int, tuple] = {}
    hooks = [
        layer.register_forward_pre_hook(
            lambda m, args, kwargs, i=i: inputs.__setitem__(i, (args[0], kwargs.get("grid"))), with_kwargs=True
        )
        for i, layer in enumerate(layers)
    ]
    try:
        model.eval()(images)
    finally:
        for hook in hooks:
            hook.remove()
    return [inputs[i] for i in range(len(layers))]


@torch.no_grad()
def attention_qkv(model: nn.Module, images: torch.Tensor) -> list[tuple]:
    """Per block of `model` seeing `images`: (q, k, v, (H, W), prefix), the q, k, v
    [B, heads, N, head_dim] its attention layer's `attend` receives, the patch grid and the
    number of prefix tokens."""
    rows = []
    for block, (tokens, grid) in zip(model.blocks, attention_inputs(model, images)):
        q, k, v = block.attn.project_qkv(tokens)
        H, W, prefix = block.attn.patch_grid(q.shape[-2], grid)
        rows.append((q, k, v, (H, W), prefix))
    return rows


#: the precisions each budget is measured in: fp32, and autocast to bf16 on the input's device
#: (the dtype GPU deployments run in; CPU autocast rounds the same matmul inputs to bf16, though
#: its list of ops kept in fp32 differs from CUDA's in details)
PRECISIONS: dict[str, Optional[torch.dtype]] = {"fp32": None, "bf16": torch.bfloat16}


@torch.no_grad()
def block_errors(
    model: nn.Module,
    images: torch.Tensor,
    mechanisms: Iterable[Mechanism],
    precisions: Iterable[str] = ("fp32",),
    attentions: Optional[Mapping[str, type[TimmAttention]]] = None,
) -> list[dict[str, Any]]:
    """Relative error per (mechanism, precision, block) at the resolution of `images` [B, 3, H, W].

    Each block's reference is its exact attention layer in float64 on the layer's own (fp32)
    input; each mechanism, with that layer's weights, runs on the same input in fp32 or under
    autocast to a dtype of `PRECISIONS`, and the error is ||out - ref|| / ||ref|| of the layer's
    output [B, N, dim] (so "exact" under bf16 is the floor that rounding alone sets). `model`
    must use exact attention. `attentions` (default: `ATTENTIONS`) maps mechanism names to the
    classes to build, e.g. another checkout's for a before/after table. Mechanisms whose budget
    does not fit this sequence (e.g. a Linformer projection longer than the training grid) get a
    row with an "error" message instead of figures.

    Raises:
        ValueError: `model` is not an exact-attention model, or a precision is not in `PRECISIONS`.
    """
    layers = [block.attn for block in model.blocks]
    if not all(type(layer).__name__ == "ExactAttention" for layer in layers):
        raise ValueError("block_errors needs a model with exact attention as the reference")
    precisions = list(precisions)
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ValueError(f"unknown precision {unknown}: choose from {', '.join(PRECISIONS)}")
    inputs = attention_inputs(model, images)
    references = [copy.deepcopy(layer).double()(x.double(), grid=grid) for (x, grid), layer in zip(inputs, layers)]
    train_grid = tuple(model.patch_embed.grid_size)
    tokens = inputs[0][0].shape[1]
    rows = []
    for mechanism in mechanisms:
        row: dict[str, Any] = {"mechanism": mechanism.label, "attention": mechanism.attention,
                               "resolution": list(images.shape[-2:]), "tokens": tokens}
        try:
            swapped = [_swap(layer, mechanism, train_grid, attentions or ATTENTIONS) for layer in layers]
        except ValueError as error:
            rows += [{**row, "precision": precision, "error": str(error)} for precision in precisions]
            continue
        for precision in precisions:
            dtype = PRECISIONS[precision]
            errors = []
            for (x, grid), layer, reference in zip(inputs, swapped, references):
                with torch.autocast(x.device.type, dtype=dtype) if dtype else contextlib.nullcontext():
                    out = layer(x, grid=grid)
                errors.append(((out.double() - reference).norm() / reference.norm()).item())
            rows.append({**row, "precision": precision, "block_errors": errors, "mean_error": sum(errors) / len(errors)})
    return rows


def validation_images(data: dict, card: ModelCard, resolution: int, count: int) -> torch.Tensor:
    """The validation subset of `count` images of `data` (`data.subset`), preprocessed as `card`
    says, at `resolution` without cropping."""
    from dataclasses import replace

    from .data import subset

    images = subset.validation_subset(replace(card, data=data), count, img_size=resolution, crop_pct=1.0)
    return torch.stack([images[i][0] for i in range(len(images))])


def error_table(
    model: nn.Module,
    card: ModelCard,
    data: dict,
    resolutions: Iterable[int],
    out: Path,
    label: str,
    command: str,
    images: int = 32,
    note: str = "",
    precisions: Iterable[str] = tuple(PRECISIONS),
    attentions: Optional[Mapping[str, type[TimmAttention]]] = None,
) -> Path:
    """Measure exact attention (the rounding floor) and `default_mechanisms` against the exact
    `model` in float64, in each of `precisions`, at each resolution on `images` validation
    images of `data`; write `out` (markdown) and its .json twin, with the environment.
    `attentions`: the classes to measure (`block_errors`)."""
    from .atomic import write_json, write_text
    from .environment import environment

    mechanisms = [Mechanism("exact"), *default_mechanisms(card.img_size // card.patch_size)]
    precisions = list(precisions)
    rows = []
    for resolution in resolutions:
        rows += block_errors(model, validation_images(data, card, resolution, images), mechanisms, precisions, attentions)
    env = environment()
    write_json(out.with_suffix(".json"), {"source": label, "command": command, "environment": env, "rows": rows,
                                          "note": note, "images": images, "precisions": precisions})
    write_text(out, render_table(rows, label, command, env, note))
    return out


def render_table(rows: list[dict], label: str, command: str, env: dict[str, Any], note: str = "") -> str:
    """Markdown: mean error per mechanism, precision and sequence length, then per-block errors;
    `note` (what was compared, how the model was trained) goes under the header."""
    from .bench.markdown import md_table

    token_counts = sorted({r["tokens"] for r in rows})
    keys = list(dict.fromkeys((r["mechanism"], r.get("precision", "fp32")) for r in rows))
    by_key = {(r["mechanism"], r.get("precision", "fp32"), r["tokens"]): r for r in rows}

    def cell(mechanism: str, precision: str, tokens: int) -> str:
        row = by_key.get((mechanism, precision, tokens))
        return "n/a" if row is None or "error" in row else f"{row['mean_error']:.4f}"

    lines = [
        "# Approximation error vs exact attention",
        "",
        "Relative error ||approx - exact|| / ||exact|| of each block's attention output, on the model's own",
        f"activations (the input each block's attention receives), mean over blocks. Source: {label}.",
        "Reference: the block's exact attention in float64. Each budget runs in fp32 and, in the bf16 rows, under",
        "bf16 autocast on the CPU (q/k/v projections, attention and output projection as a bf16 deployment runs",
        "them); the exact rows are the floor that the precision's rounding alone sets.",
        f"Command: `{command}` at commit {env.get('git_commit')}, CPU: {env.get('cpu_model')}, torch {torch.__version__}.",
        "n/a: the budget does not fit that sequence (e.g. a projection longer than the training grid).",
        *([note] if note else []),
        "",
        *md_table(["mechanism", "precision", *(f"{t} tokens" for t in token_counts)],
                  [[m, p, *(cell(m, p, t) for t in token_counts)] for m, p in keys]),
        "",
        "## Per block",
        "",
        *md_table(["mechanism", "precision", "tokens", "errors by block"],
                  [[r["mechanism"], r.get("precision", "fp32"), r["tokens"], ", ".join(f"{e:.4f}" for e in r["block_errors"])]
                   for r in rows if "block_errors" in r]),
    ]
    return "\n".join(lines) + "\n"
