"""build_model(): a timm VisionTransformer whose attention is one of `ATTENTIONS`.

The model is timm's own (`timm.create_model`), built with `attn_layer=partial(Mechanism, ...)`
and `dynamic_img_size=True`, so every timm feature (pretrained configs, position-embedding
resampling, forward_features/forward_head, EMA, grad checkpointing) keeps working. Two
additions: the model and its blocks pass each input's patch grid to the attention layers as a
forward argument (`GridVisionTransformer`, `GridBlock`), and weight loading that copies a timm
checkpoint into the swapped model and reports which tensors were loaded and which are new to
the mechanism.
"""
from __future__ import annotations

import difflib
import inspect
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import timm
import torch
from timm.models import checkpoint
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import Block, VisionTransformer, checkpoint_filter_fn
from torch import nn

from .attention import ATTENTIONS, TimmAttention

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")
_TIMM_ATTENTION_ARGS = set(inspect.signature(TimmAttention.__init__).parameters) - {"self"}


@dataclass
class LoadReport:
    """Which tensors came from a checkpoint, which are new, and which were left behind."""

    source: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    reinitialised_head: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        if self.new:
            parts.append(f"{len(self.new)} new to the mechanism ({', '.join(self.new[:4])}{', ...' if len(self.new) > 4 else ''})")
        if self.reinitialised_head:
            parts.append(f"classifier re-initialised ({', '.join(self.reinitialised_head)})")
        if self.unused:
            parts.append(f"{len(self.unused)} checkpoint tensors unused ({', '.join(self.unused[:4])})")
        return "; ".join(parts)


def check_input_size(x: torch.Tensor, patch_size: tuple[int, int], padded: bool) -> None:
    """Refuse images that are not [B, C, H, W] or, unless the model pads them
    (`dynamic_img_pad`), whose H and W are not multiples of the patch size.

    Raises:
        ValueError: naming the shape and a size that works. Symbolic sizes (export, FX) pass.
    """
    if isinstance(x, torch.Tensor) and x.dim() != 4:
        raise ValueError(f"expected images [B, C, H, W], got a tensor of shape {tuple(x.shape)}")
    H, W = x.shape[-2:]
    ph, pw = patch_size
    if not padded and isinstance(H, int) and isinstance(W, int) and (H % ph or W % pw):
        fix_h, fix_w = max(ph, round(H / ph) * ph), max(pw, round(W / pw) * pw)
        raise ValueError(
            f"input {H}x{W} is not a multiple of the patch size {ph}x{pw}: "
            f"resize or crop it to e.g. {fix_h}x{fix_w}, or build the model with dynamic_img_pad=True"
        )


class GridBlock(Block):
    """timm's `Block` whose forward also takes the patch grid and hands it to the attention layer."""

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
        grid: Optional[tuple[int, int]] = None,
    ) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal, grid=grid)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class GridVisionTransformer(VisionTransformer):
    """timm's `VisionTransformer` that passes each input's patch grid to every block as an argument.

    The grid is read from the patch embedding's output [B, H, W, C] (the model is built with
    `dynamic_img_size=True`), so it is the grid of the tokens actually processed, after any
    `dynamic_img_pad` padding or `set_input_size(patch_size=...)` change. Because it is an
    argument and not module state, a checkpointed block recomputes with its own grid (two
    forwards at different sizes before one backward are correct) and FX / `torch.export` see it
    as part of the graph. `forward_features` and `forward_intermediates` follow timm 1.0.31's
    (timm/models/vision_transformer.py) with the grid added to each block call.
    """

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Tokens [B, N, C] ready for the blocks, and the (H, W) patch grid of images x [B, C, H, W]."""
        check_input_size(x, tuple(self.patch_embed.patch_size), self.patch_embed.dynamic_img_pad)
        x = self.patch_embed(x)
        grid = (x.shape[1], x.shape[2])
        x = self.norm_pre(self.patch_drop(self._pos_embed(x)))
        return x, grid

    def _block(self, block: nn.Module, x: torch.Tensor, grid, attn_mask, is_causal) -> torch.Tensor:
        if self.grad_checkpointing and attn_mask is None and not is_causal and not torch.jit.is_scripting():
            return checkpoint(block, x, grid=grid)
        return block(x, attn_mask=attn_mask, is_causal=is_causal, grid=grid)

    def forward_features(
        self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
    ) -> torch.Tensor:
        x, grid = self._embed(x)
        for block in self.blocks:
            x = self._block(block, x, grid, attn_mask, is_causal)
        return self.norm(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, list[int]]] = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        output_dict: bool = False,
        attn_mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
    ) -> Union[list[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]], dict[str, Any]]:
        """timm's `forward_intermediates` (same arguments and outputs), the grid passed to each block."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        B = x.shape[0]
        x, grid = self._embed(x)
        blocks = self.blocks if not stop_early else self.blocks[: max_index + 1]
        intermediates = []
        for i, block in enumerate(blocks):
            x = self._block(block, x, grid, attn_mask, is_causal)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        prefix_tokens = None
        if self.num_prefix_tokens:
            prefix_tokens = [y[:, : self.num_prefix_tokens] for y in intermediates]
            intermediates = [y[:, self.num_prefix_tokens :] for y in intermediates]
        if output_fmt == "NCHW":
            H, W = grid
            intermediates = [y.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if output_dict:
            result: dict[str, Any] = {"image_intermediates": intermediates}
            if prefix_tokens is not None and return_prefix_tokens:
                result["image_intermediates_prefix"] = prefix_tokens
            if not intermediates_only:
                result["image_features"] = self.norm(x)
            return result
        if return_prefix_tokens and prefix_tokens is not None:
            intermediates = list(zip(intermediates, prefix_tokens))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates


def _adopt_grid_classes(model: VisionTransformer, model_name: str) -> None:
    """Turn a freshly built timm ViT into a `GridVisionTransformer` of `GridBlock`s in place
    (same modules and weights; only the forwards that carry the grid differ)."""
    other = sorted({type(b).__name__ for b in model.blocks if type(b) is not Block})
    if other:
        raise ValueError(
            f"{model_name!r} uses {', '.join(other)} blocks; effvit_deploy swaps attention in timm "
            "ViTs built from the standard Block (e.g. vit_small_patch16_224, deit_tiny_patch16_224)"
        )
    for block in model.blocks:
        block.__class__ = GridBlock
    model.__class__ = GridVisionTransformer


def bind_arguments(mechanism: type[TimmAttention], **bound: Any) -> type[TimmAttention]:
    """A subclass of `mechanism` with its extra arguments bound: timm checks `attn_layer` with
    issubclass(), so a functools.partial is refused."""

    class Bound(mechanism):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**bound, **kwargs})

    Bound.__name__ = Bound.__qualname__ = mechanism.__name__
    return Bound


def _unknown(kind: str, name: str, valid: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown {kind} {name!r}.{hint} Valid: {', '.join(valid)}")


def split_attention_kwargs(attention: str, kwargs: dict[str, Any]) -> tuple[dict, dict]:
    """Split keyword arguments into (mechanism arguments, timm model arguments)."""
    if attention not in ATTENTIONS:
        raise _unknown("attention", attention, sorted(ATTENTIONS))
    own = set(inspect.signature(ATTENTIONS[attention].__init__).parameters) - _TIMM_ATTENTION_ARGS
    own -= {"self", "kwargs"}
    attn_kwargs = {k: v for k, v in kwargs.items() if k in own}
    return attn_kwargs, {k: v for k, v in kwargs.items() if k not in own}


def build_model(
    model_name: str,
    attention: str = "exact",
    num_classes: int = 1000,
    pretrained: Union[bool, str, Path] = False,
    **kwargs: Any,
) -> VisionTransformer:
    """A timm ViT with its attention swapped, in eval mode, running at any H x W multiple of the patch.

    Args:
        model_name: any timm VisionTransformer name, e.g. "vit_small_patch16_224".
        attention: a key of `ATTENTIONS`.
        num_classes: classifier outputs.
        pretrained: False; True for timm hub weights (needs the network); or a local
            .safetensors/.pth/.pt/.bin/.npz file, loaded offline.
        **kwargs: mechanism arguments (e.g. num_features=256, landmarks=64, proj_len=64,
            window_size=7, dilations=(1, 2, 3)) and timm model arguments (depth=, img_size=,
            embed_dim=, ...). Which is which follows the mechanism's constructor signature.

    The result carries `effvit_spec` (what was asked, JSON-friendly) and, when weights were
    loaded, `effvit_load_report` (a `LoadReport`).
    """
    attn_kwargs, model_kwargs = split_attention_kwargs(attention, kwargs)
    if model_name not in timm.list_models():
        close = difflib.get_close_matches(model_name, timm.list_models("*vit*"), n=5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown timm model {model_name!r}.{hint} List them with timm.list_models('vit_*')")
    model_kwargs = {"num_classes": num_classes, "dynamic_img_size": True, **model_kwargs}
    not_a_vit = ValueError(
        f"{model_name!r} is not a timm VisionTransformer: pick a ViT, e.g. "
        "vit_small_patch16_224 or deit_tiny_patch16_224"
    )
    try:
        with torch.device("meta"):
            probe = timm.create_model(model_name, pretrained=False, **model_kwargs)
    except TypeError as error:
        if "dynamic_img_size" in str(error):
            raise not_a_vit from None
        raise ValueError(f"cannot build {model_name!r} with these arguments: {error}") from None
    except (ValueError, AssertionError, RuntimeError) as error:
        raise ValueError(f"cannot build {model_name!r} with {model_kwargs}: {' '.join(str(error).split()) or type(error).__name__}") from None
    if not isinstance(probe, VisionTransformer):
        raise not_a_vit
    mechanism = ATTENTIONS[attention]
    if "grid_size" in inspect.signature(mechanism.__init__).parameters:
        attn_kwargs.setdefault("grid_size", tuple(probe.patch_embed.grid_size))
    model = timm.create_model(
        model_name, pretrained=False, attn_layer=bind_arguments(mechanism, **attn_kwargs), **model_kwargs
    )
    _adopt_grid_classes(model, model_name)
    model.effvit_spec = {
        "model": model_name,
        "attention": attention,
        "num_classes": num_classes,
        "attention_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in attn_kwargs.items()},
        "model_kwargs": {k: v for k, v in model_kwargs.items() if k not in ("num_classes", "dynamic_img_size")},
    }
    if pretrained:
        model.effvit_load_report = load_weights(model, pretrained, model_name, model_kwargs)
        log.info(model.effvit_load_report.summary())
    return model.eval()


def _read_file(path: Path, reference: VisionTransformer) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if suffix == ".npz":
        from timm.models.vision_transformer import _load_weights

        _load_weights(reference, str(path))
        return reference.state_dict()
    return torch.load(path, map_location="cpu", weights_only=True)


def _read_state_dict(path: Path, reference: VisionTransformer) -> dict[str, torch.Tensor]:
    """A timm-layout state dict from a local file, never unpickling arbitrary objects; a file
    that cannot be read is one ValueError naming it (never torch's advice to unpickle it)."""
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ValueError(f"unsupported weights file {path.name!r}: use one of {', '.join(WEIGHT_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise ValueError(f"pretrained weights file {path} is empty (0 bytes): download or copy it again")
    try:
        state = _read_file(path, reference)
    except pickle.UnpicklingError:
        raise ValueError(
            f"pretrained weights file {path} holds pickled Python objects, which are never loaded: "
            "save the state dict as .safetensors (safetensors.torch.save_file) or with tensors only"
        ) from None
    except Exception as exc:  # torch, safetensors and numpy each raise their own types for a bad file
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ValueError(
            f"pretrained weights file {path} cannot be read ({reason}): it is truncated, corrupt or not a "
            f"{path.suffix} weights file; download or copy it again"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"pretrained weights file {path} does not hold a state dict (name -> tensor)")
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"pretrained weights file {path} does not hold a state dict (name -> tensor)")
    return checkpoint_filter_fn(state, reference)


def load_weights(
    model: VisionTransformer,
    source: Union[bool, str, Path],
    model_name: str,
    model_kwargs: dict[str, Any],
) -> LoadReport:
    """Copy timm ViT weights (hub when `source is True`, else a local file) into `model`.

    Tensors shared with timm's layout are loaded; mechanism tensors absent from the checkpoint
    keep their initialisation and are reported as new; a classifier whose class count differs
    is re-initialised and reported; any other shape mismatch is an error naming the tensors.
    """
    if source is True:
        reference = timm.create_model(model_name, pretrained=True, **model_kwargs)
        state, label = reference.state_dict(), f"timm hub ({model_name})"
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights file {str(path)!r} does not exist")
        reference = timm.create_model(model_name, pretrained=False, **model_kwargs)
        state, label = _read_state_dict(path, reference), str(path)

    own = model.state_dict()
    report = LoadReport(source=label)
    head_keys = {f"{model.default_cfg.get('classifier', 'head')}.{p}" for p in ("weight", "bias")}
    mismatched = []
    to_load = {}
    for key, tensor in state.items():
        if key not in own:
            report.unused.append(key)
        elif own[key].shape != tensor.shape:
            if key in head_keys:
                report.reinitialised_head.append(key)
            else:
                mismatched.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(own[key].shape)}")
        else:
            to_load[key] = tensor
    if mismatched:
        raise ValueError(
            f"weights in {label} do not fit {model_name} (check depth/embed_dim/patch size): "
            + "; ".join(mismatched)
        )
    if not to_load:
        unused = ", ".join(report.unused[:3]) + (", ..." if len(report.unused) > 3 else "")
        raise ValueError(
            f"weights in {label} share no tensor with {model_name} (it holds {len(state)}: {unused}): "
            "pass the weights of a timm ViT of this architecture"
        )
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.new = sorted(k for k in own if k not in state)
    return report
