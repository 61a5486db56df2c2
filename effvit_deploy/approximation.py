"""How far each approximation is from exact attention on a model's own activations.

For every block of an exact-attention model, the input of its attention layer is captured on
real images; each mechanism, given that block's own qkv/proj weights, attends over the same
input, and the relative error ||approx - exact|| / ||exact|| of the block's attention output is
reported. This isolates the approximation itself from fine-tuning: it is the error a
pretrained model sees the moment its attention is swapped.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from .attention import ATTENTIONS, TimmAttention
from .runs import ModelCard


@dataclass(frozen=True)
class Mechanism:
    """One approximation at one budget, e.g. Mechanism("nystrom", {"landmarks": 32})."""

    attention: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        args = ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v}" for k, v in self.kwargs.items())
        return f"{self.attention}({args})"


def default_mechanisms(grid: int) -> list[Mechanism]:
    """Budgets to compare on a model trained on a grid x grid patch grid (14 for ViT-S/16 at 224).

    Linformer and atrous budgets scale with the grid and end at their exact limit (a full-rank
    projection, one window over the whole training grid); Performer and Nystrom use the
    paper-sized budgets, which fit any sequence (landmarks are capped at the patch grid).
    Nystrom is also measured with 64 pseudo-inverse iterations (the default is 8), atrous with its
    default rates (1, 2, 3) and with ACC-ViT's power-of-two rates.
    """
    cells = grid * grid
    mechanisms = [
        *(Mechanism("linformer", {"proj_len": p}) for p in sorted({max(1, cells // 16), max(1, cells // 4), cells})),
        *(Mechanism("performer", {"num_features": m}) for m in (64, 256, 1024)),
        *(Mechanism("nystrom", {"landmarks": m, "conv_kernel": 0}) for m in (16, 32, 64, 128)),
        *(Mechanism("nystrom", {"landmarks": m, "pinv_iterations": 64, "conv_kernel": 0}) for m in (16, 64)),
        Mechanism("atrous", {"window_size": max(2, grid // 4), "dilations": (1, 2, 3)}),
        Mechanism("atrous", {"window_size": max(2, grid // 4), "dilations": "pow2"}),
        Mechanism("atrous", {"window_size": max(2, grid // 2), "dilations": (1, 2, 3)}),
        Mechanism("atrous", {"window_size": grid, "dilations": (1,)}),
    ]
    return list({m.label: m for m in mechanisms}.values())


def _swap(exact: TimmAttention, mechanism: Mechanism, train_grid: tuple[int, int]) -> TimmAttention:
    """`mechanism` with the exact layer's qkv/proj/norm weights and configuration."""
    cls = ATTENTIONS[mechanism.attention]
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


@torch.no_grad()
def block_errors(model: nn.Module, images: torch.Tensor, mechanisms: Iterable[Mechanism]) -> list[dict[str, Any]]:
    """Relative error per (mechanism, block) at the resolution of `images` [B, 3, H, W].

    `model` must use exact attention. Mechanisms whose budget does not fit this sequence
    (e.g. a Linformer projection longer than the training grid) are reported with an "error"
    message instead of figures.
    """
    layers = [block.attn for block in model.blocks]
    if not all(type(layer).__name__ == "ExactAttention" for layer in layers):
        raise ValueError("block_errors needs a model with exact attention as the reference")
    inputs = attention_inputs(model, images)
    train_grid = tuple(model.patch_embed.grid_size)
    tokens = inputs[0][0].shape[1]
    rows = []
    for mechanism in mechanisms:
        row: dict[str, Any] = {"mechanism": mechanism.label, "attention": mechanism.attention,
                               "resolution": list(images.shape[-2:]), "tokens": tokens}
        try:
            swapped = [_swap(layer, mechanism, train_grid) for layer in layers]
        except ValueError as error:
            rows.append({**row, "error": str(error)})
            continue
        errors = []
        for (tokens_in, grid), exact, approx in zip(inputs, layers, swapped):
            reference = exact(tokens_in, grid=grid)
            errors.append(((approx(tokens_in, grid=grid) - reference).norm() / reference.norm()).item())
        rows.append({**row, "block_errors": errors, "mean_error": sum(errors) / len(errors)})
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
) -> Path:
    """Measure `default_mechanisms` against the exact `model` at each resolution on `images`
    validation images of `data`; write `out` (markdown) and its .json twin, with the environment."""
    from .atomic import write_json, write_text
    from .environment import environment

    mechanisms = default_mechanisms(card.img_size // card.patch_size)
    rows = []
    for resolution in resolutions:
        rows += block_errors(model, validation_images(data, card, resolution, images), mechanisms)
    env = environment()
    write_json(out.with_suffix(".json"), {"source": label, "command": command, "environment": env, "rows": rows,
                                          "note": note})
    write_text(out, render_table(rows, label, command, env, note))
    return out


def render_table(rows: list[dict], label: str, command: str, env: dict[str, Any], note: str = "") -> str:
    """Markdown: mean error per mechanism and sequence length, then per-block errors; `note`
    (what was compared, how the model was trained) goes under the header."""
    token_counts = sorted({r["tokens"] for r in rows})
    mechanisms = list(dict.fromkeys(r["mechanism"] for r in rows))
    by_key = {(r["mechanism"], r["tokens"]): r for r in rows}

    def cell(mechanism: str, tokens: int) -> str:
        row = by_key.get((mechanism, tokens))
        return "n/a" if row is None or "error" in row else f"{row['mean_error']:.4f}"

    lines = [
        "# Approximation error vs exact attention",
        "",
        "Relative error ||approx - exact|| / ||exact|| of each block's attention output, on the model's own",
        f"activations (the input each block's attention receives), mean over blocks. Source: {label}.",
        f"Command: `{command}` at commit {env.get('git_commit')}, CPU: {env.get('cpu_model')}, torch {torch.__version__}.",
        "n/a: the budget does not fit that sequence (e.g. a projection longer than the training grid).",
        *([note] if note else []),
        "",
        "| mechanism | " + " | ".join(f"{t} tokens" for t in token_counts) + " |",
        "|---|" + "---:|" * len(token_counts),
    ]
    lines += [f"| {m} | " + " | ".join(cell(m, t) for t in token_counts) + " |" for m in mechanisms]
    lines += ["", "## Per block", "", "| mechanism | tokens | " + "errors by block |", "|---|---:|---|"]
    lines += [
        f"| {r['mechanism']} | {r['tokens']} | " + ", ".join(f"{e:.4f}" for e in r["block_errors"]) + " |"
        for r in rows if "block_errors" in r
    ]
    return "\n".join(lines) + "\n"

