"""build_model(): a timm VisionTransformer whose attention is one of `ATTENTIONS` (or a reference, `REFERENCES`).

The model is timm's own (`timm.create_model` with `dynamic_img_size=True`), its blocks'
attention layers instances of the module-level mechanism classes (so the model pickles, spawns
and deep-copies), so timm's features keep working; docs/TIMM_COMPATIBILITY.md lists what is
covered and tested against plain timm. Additions:
- the model and its blocks pass each input's patch grid to the attention layers as a forward
  argument (`GridVisionTransformer`, `GridBlock`), never as module state;
- weight loading that copies a timm checkpoint into the swapped model, adapts what timm's
  `load_pretrained` adapts (class count, input channels) plus Linformer projections stored at
  another grid, and reports which tensors were loaded, adapted and new (`LoadReport`);
- a timm entry point, `effvit_vit`, so `timm.models.save_for_hf` / `push_to_hf_hub` record
  the base model, mechanism and its settings in config.json and `timm.create_model(
  "local-dir:..."/"hf-hub:...")` rebuilds the model (after `import effvit_deploy`).
"""
from __future__ import annotations

import contextlib
import contextvars
import difflib
import inspect
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import timm
import timm.models.vision_transformer as timm_vit
import torch
from timm.models import PretrainedCfg, checkpoint, load_pretrained, register_model, resolve_pretrained_cfg
from timm.models._features import FeatureGetterNet, feature_take_indices
from timm.models._manipulate import adapt_input_conv
from timm.models.vision_transformer import Block, VisionTransformer, checkpoint_filter_fn
from torch import nn

from .attention import ATTENTIONS, REFERENCES, REGISTRY, LinformerAttention, TimmAttention
from .attention.linformer import resample_projection

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")
_TIMM_ATTENTION_ARGS = set(inspect.signature(TimmAttention.__init__).parameters) - {"self"}


class ArgumentError(TypeError, ValueError):
    """A `build_model` argument of the wrong type, or a keyword nobody takes: a TypeError as
    timm raises for these, and a ValueError so callers that report bad input in one line (the
    CLIs) treat it as bad input."""


@dataclass
class LoadReport:
    """Which tensors came from a checkpoint, which are new, and which were left behind."""

    source: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    reinitialised_head: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        if self.new:
            parts.append(f"{len(self.new)} new to the mechanism ({', '.join(self.new[:4])}{', ...' if len(self.new) > 4 else ''})")
        if self.adapted:
            parts.append(f"{len(self.adapted)} adapted ({', '.join(self.adapted[:4])}{', ...' if len(self.adapted) > 4 else ''})")
        if self.reinitialised_head:
            parts.append(f"classifier re-initialised ({', '.join(self.reinitialised_head)})")
        if self.unused:
            parts.append(f"{len(self.unused)} checkpoint tensors unused ({', '.join(self.unused[:4])})")
        return "; ".join(parts)


def check_input_size(x: torch.Tensor, patch_size: tuple[int, int], padded: bool) -> torch.Tensor:
    """x itself, after refusing images that are not [B, C, H, W] or, unless the model pads them
    (`dynamic_img_pad`), whose H and W are not multiples of the patch size. Registered with
    `torch.fx.wrap`: FX tracing records one call (kept, since its output feeds the model) and the
    check runs when the traced graph runs.

    Raises:
        ValueError: naming the shape and a size that works. Symbolic sizes (export) pass.
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
    return x


torch.fx.wrap("check_input_size")


def resample_pos_embed(
    pos_embed: torch.Tensor, grid: tuple[int, int], build_grid: tuple[int, int], num_prefix_tokens: int
) -> torch.Tensor:
    """timm's `resample_abs_pos_embed` of position embeddings [1, P + Ht * Wt, C] to `grid`.
    Registered with `torch.fx.wrap` (timm registers it only with its own FX tracer), so
    `torch.fx.symbolic_trace` and torchvision's create_feature_extractor record one call.
    timm's function is looked up in timm's ViT module at call time, so export's portable
    resampling (`effvit_deploy.export.resample.portable_resampling`, which swaps that module
    global) applies here as it does in timm's own `_pos_embed`."""
    return timm_vit.resample_abs_pos_embed(
        pos_embed, new_size=grid, old_size=build_grid, num_prefix_tokens=num_prefix_tokens
    )


torch.fx.wrap("resample_pos_embed")


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

    def __prepare_scriptable__(self) -> nn.Module:
        """`torch.jit.script` is refused with one line (it calls this first): the mechanisms'
        shape arithmetic and the grid argument are Python that TorchScript does not compile."""
        raise RuntimeError(
            "torch.jit.script is not supported for effvit_deploy models: use torch.jit.trace(model, images), "
            "torch.export / ONNX (effvit-export) or torch.compile"
        )

    def set_input_size(
        self, img_size: Optional[tuple[int, int]] = None, patch_size: Optional[tuple[int, int]] = None
    ) -> None:
        """timm's `set_input_size` (new image and/or patch size; position embeddings resampled),
        plus Linformer projections resampled to the new patch grid the same way weight loading
        does, so the model equals one built at the new size holding the same weights."""
        super().set_input_size(img_size=img_size, patch_size=patch_size)
        grid = tuple(self.patch_embed.grid_size)
        for module in self.modules():
            if isinstance(module, LinformerAttention):
                module.set_grid(grid)
        spec = getattr(self, "effvit_spec", None)
        if spec is not None:
            spec["model_kwargs"]["img_size"] = list(self.patch_embed.img_size)
            if patch_size is not None:
                spec["model_kwargs"]["patch_size"] = list(self.patch_embed.patch_size)
            if "grid_size" in spec["attention_kwargs"]:
                spec["attention_kwargs"]["grid_size"] = list(grid)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """timm 1.0.31's `_pos_embed` for patch tokens x [B, H, W, C] (the model is built with
        `dynamic_img_size=True`) -> [B, P + H * W, C], the resampling through the FX-wrapped
        `resample_pos_embed`."""
        if self.pos_embed is None or not self.dynamic_img_size:
            return super()._pos_embed(x)
        B, H, W, C = x.shape
        prefix = 0 if self.no_embed_class else self.num_prefix_tokens
        pos_embed = resample_pos_embed(self.pos_embed, (H, W), tuple(self.patch_embed.grid_size), prefix)
        x = x.view(B, -1, C)
        to_cat = []
        if self.cls_token is not None:
            to_cat.append(self.cls_token.expand(B, -1, -1))
        if self.reg_token is not None:
            to_cat.append(self.reg_token.expand(B, -1, -1))
        if self.no_embed_class:
            x = x + pos_embed
            x = torch.cat(to_cat + [x], dim=1) if to_cat else x
        else:
            x = torch.cat(to_cat + [x], dim=1) if to_cat else x
            x = x + pos_embed
        return self.pos_drop(x)

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Tokens [B, N, C] ready for the blocks, and the (H, W) patch grid of images x [B, C, H, W]."""
        x = check_input_size(x, tuple(self.patch_embed.patch_size), self.patch_embed.dynamic_img_pad)
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


_MECHANISM: contextvars.ContextVar = contextvars.ContextVar("effvit_mechanism", default=None)


class MechanismSlot(TimmAttention):
    """timm's `attn_layer` while `build_model` builds: constructing it constructs the mechanism
    chosen by `building_with` (timm checks `attn_layer` with issubclass(), so a partial is
    refused). The blocks therefore hold instances of the importable mechanism classes, and the
    model pickles. Constructed outside `building_with` it raises."""

    def __new__(cls, *args: Any, **kwargs: Any) -> TimmAttention:
        chosen = _MECHANISM.get()
        if chosen is None:
            raise RuntimeError("MechanismSlot is only built inside effvit_deploy.models.building_with()")
        mechanism, bound = chosen
        return mechanism(*args, **{**bound, **kwargs})


@contextlib.contextmanager
def building_with(mechanism: type[TimmAttention], **bound: Any) -> Iterator[type[MechanismSlot]]:
    """Within this context, `attn_layer=MechanismSlot` builds `mechanism(..., **bound)`."""
    token = _MECHANISM.set((mechanism, bound))
    try:
        yield MechanismSlot
    finally:
        _MECHANISM.reset(token)


def _unknown(kind: str, name: str, valid: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown {kind} {name!r}.{hint} Valid: {', '.join(valid)}")


def mechanism_arguments(attention: str) -> set[str]:
    """The arguments of mechanism `attention` beyond timm's attention constructor."""
    own = set(inspect.signature(REGISTRY[attention].__init__).parameters) - _TIMM_ATTENTION_ARGS
    return own - {"self", "kwargs"}


def split_attention_kwargs(attention: str, kwargs: dict[str, Any]) -> tuple[dict, dict]:
    """Split keyword arguments into (mechanism arguments, timm model arguments)."""
    if not isinstance(attention, str):
        raise ArgumentError(f"attention must be a mechanism name ({', '.join(sorted(ATTENTIONS))}), got {attention!r}")
    if attention not in REGISTRY:
        raise _unknown("attention", attention, [*sorted(ATTENTIONS), *REFERENCES])
    own = mechanism_arguments(attention)
    attn_kwargs = {k: v for k, v in kwargs.items() if k in own}
    return attn_kwargs, {k: v for k, v in kwargs.items() if k not in own}


def _check_arguments(model_name: Any, num_classes: Any, pretrained: Any) -> None:
    """The checks that need no model: types and values of build_model's own arguments.

    Raises:
        TypeError / ValueError / FileNotFoundError: one line naming the argument and the fix.
    """
    if not isinstance(model_name, str):
        raise ArgumentError(f"model_name must be a timm model name such as 'vit_small_patch16_224', got {model_name!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise ArgumentError(f"num_classes must be an int (0 for no classifier), got {num_classes!r}")
    if num_classes < 0:
        raise ValueError(f"num_classes={num_classes} must be >= 0: the number of classes, or 0 to build without a classifier")
    if isinstance(pretrained, bool):
        return
    if not isinstance(pretrained, (str, os.PathLike)):
        raise ArgumentError(f"pretrained must be True/False or the path of a weights file, got {pretrained!r}")
    path = Path(pretrained).expanduser()
    if path.is_dir():
        raise ValueError(
            f"pretrained={str(pretrained)!r} is a folder, expected a weights file "
            f"({', '.join(WEIGHT_SUFFIXES)}): pass the file inside it"
        )
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file {str(path)!r} does not exist")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ValueError(f"pretrained={str(pretrained)!r}: unsupported weights file, use one of {', '.join(WEIGHT_SUFFIXES)}")


def _check_img_size(probe: VisionTransformer) -> None:
    """Refuse a build size that is not a whole number of patches (unless `dynamic_img_pad`)."""
    img, patch = tuple(probe.patch_embed.img_size), tuple(probe.patch_embed.patch_size)
    if probe.patch_embed.dynamic_img_pad:
        return
    if any(i < p or i % p for i, p in zip(img, patch)):
        fix = tuple(max(p, round(i / p) * p) for i, p in zip(img, patch))
        shown = img[0] if img[0] == img[1] else img
        raise ValueError(
            f"img_size={shown} is not a multiple of the patch size {patch[0]}x{patch[1]}: use e.g. "
            f"img_size={fix[0] if fix[0] == fix[1] else fix}, or dynamic_img_pad=True"
        )


def _json_friendly(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


def build_model(
    model_name: str,
    attention: str = "exact",
    num_classes: int = 1000,
    pretrained: Union[bool, str, Path] = False,
    **kwargs: Any,
) -> nn.Module:
    """A timm ViT with its attention swapped, in eval mode, running at any H x W multiple of the patch.

    Args:
        model_name: any timm VisionTransformer name, e.g. "vit_small_patch16_224".
        attention: a key of `ATTENTIONS`, or of `attention.REFERENCES` ("attention-free": no token
            mixing, the benchmark's bound).
        num_classes: classifier outputs (0: no classifier, as in timm).
        pretrained: False; True for timm hub weights (needs the network); or a local
            .safetensors/.pth/.pt/.bin/.npz file, loaded offline and adapted as timm adapts
            (class count, input channels; Linformer projections resampled to this build's grid).
        **kwargs: mechanism arguments (e.g. num_features=256, landmarks=64, proj_len=64,
            window_size=7, dilations=(1, 2, 3)) and timm model arguments (depth=, img_size=,
            embed_dim=, in_chans=, dynamic_img_pad=, device=, dtype=, ...). Which is which
            follows the mechanism's constructor signature. `features_only=True` (with
            `out_indices=`, `output_fmt=`, `norm=`) returns timm's `FeatureGetterNet` over the
            model's `forward_intermediates`, as `timm.create_model(..., features_only=True)` does.

    The result carries `effvit_spec` (what was asked, JSON-friendly) and, when weights were
    loaded, `effvit_load_report` (a `LoadReport`).

    Raises:
        ArgumentError (a TypeError and ValueError): an argument of the wrong type, or a keyword
            neither the mechanism nor timm knows.
        ValueError / FileNotFoundError: a value that cannot work, in one line naming it and the fix.
    """
    _check_arguments(model_name, num_classes, pretrained)
    attn_kwargs, model_kwargs = split_attention_kwargs(attention, kwargs)
    features = {k: model_kwargs.pop(k) for k in ("out_indices", "output_fmt", "norm", "feature_cls") if k in model_kwargs}
    features_only = model_kwargs.pop("features_only", False)
    if features and not features_only:
        raise ArgumentError(f"{', '.join(features)} only apply with features_only=True")
    if features.pop("feature_cls", "getter") != "getter":
        raise ValueError("features_only for a ViT uses timm's FeatureGetterNet: feature_cls must be 'getter'")
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
            probe = timm.create_model(model_name, pretrained=False, **{**model_kwargs, "device": "meta"})
    except TypeError as error:
        if "dynamic_img_size" in str(error):
            raise not_a_vit from None
        if "unexpected keyword argument" in str(error):
            name = str(error).split("unexpected keyword argument")[-1].strip()
            raise ArgumentError(
                f"build_model() got an unexpected keyword argument {name}: not an argument of attention="
                f"{attention!r} ({', '.join(sorted(mechanism_arguments(attention))) or 'it takes none'}) nor of {model_name}"
            ) from None
        raise ArgumentError(f"cannot build {model_name!r} with these arguments: {error}") from None
    except (ValueError, AssertionError, RuntimeError) as error:
        raise ValueError(f"cannot build {model_name!r} with {model_kwargs}: {' '.join(str(error).split()) or type(error).__name__}") from None
    if not isinstance(probe, VisionTransformer):
        raise not_a_vit
    _check_img_size(probe)
    mechanism = REGISTRY[attention]
    given_attn_kwargs = dict(attn_kwargs)
    if "grid_size" in inspect.signature(mechanism.__init__).parameters:
        attn_kwargs.setdefault("grid_size", tuple(probe.patch_embed.grid_size))
    with building_with(mechanism, **attn_kwargs) as slot:
        model = timm.create_model(model_name, pretrained=False, attn_layer=slot, **model_kwargs)
    _adopt_grid_classes(model, model_name)
    timm_args = {k: v for k, v in model_kwargs.items() if k not in ("num_classes", "dynamic_img_size", "device", "dtype")}
    model.effvit_spec = {
        "model": model_name,
        "attention": attention,
        "num_classes": num_classes,
        "attention_kwargs": _json_friendly(attn_kwargs),
        "model_kwargs": _json_friendly(timm_args),
    }
    # What timm's save_for_hf records: rebuilt through the `effvit_vit` entry point below. A
    # defaulted grid_size is left out, so a save after set_input_size rebuilds at the new grid.
    model._model_args = {
        "base_model": model_name,
        "attention": attention,
        "attention_kwargs": _json_friendly(given_attn_kwargs),
        "num_classes": num_classes,
        **_json_friendly(timm_args),
    }
    model.pretrained_cfg = {**model.pretrained_cfg, "architecture": ENTRY_POINT}
    if pretrained:
        model.effvit_load_report = load_weights(model, pretrained, model_name, model_kwargs)
        log.info(model.effvit_load_report.summary())
    model.eval()
    if features_only:
        spec = model.effvit_spec
        model = FeatureGetterNet(model, out_indices=features.pop("out_indices", 3), **features)
        model.effvit_spec = spec
    return model


ENTRY_POINT = "effvit_vit"


def filter_checkpoint(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's ViT checkpoint filter (position embeddings, patch kernel resampled) plus Linformer
    projections resampled to `model`'s grid: the `filter_fn` for timm's `load_pretrained`."""
    state = checkpoint_filter_fn(state, model)
    resample_linformer_projections(state, model)
    return state


@register_model
def effvit_vit(
    pretrained: bool = False,
    base_model: str = "vit_small_patch16_224",
    attention: str = "exact",
    attention_kwargs: Optional[dict[str, Any]] = None,
    pretrained_cfg: Optional[Any] = None,
    pretrained_cfg_overlay: Optional[dict[str, Any]] = None,
    pretrained_model_args: Optional[dict[str, Any]] = None,
    cache_dir: Optional[Union[str, Path]] = None,
    **kwargs: Any,
) -> nn.Module:
    """timm entry point for effvit_deploy models: `timm.create_model("effvit_vit", base_model=...,
    attention=..., attention_kwargs={...}, **timm_args)` equals `build_model(base_model, attention,
    **attention_kwargs, **timm_args)`. It is what config.json names when `timm.models.save_for_hf`
    or `push_to_hf_hub` saves a model of `build_model`, so `timm.create_model("local-dir:FOLDER")`
    and `"hf-hub:ORG/NAME"` rebuild it and load its weights through timm's `load_pretrained`
    (class count and input channels adapted as timm does)."""
    model = build_model(base_model, attention, **(attention_kwargs or {}), **kwargs)
    inner = model.model if isinstance(model, FeatureGetterNet) else model
    # the saved config (local-dir:, hf-hub:) when there is one, else the base model's (mean, std, ...)
    source = pretrained_cfg if isinstance(pretrained_cfg, (dict, PretrainedCfg)) and pretrained_cfg else dict(inner.pretrained_cfg)
    cfg = resolve_pretrained_cfg(ENTRY_POINT, pretrained_cfg=source, pretrained_cfg_overlay=pretrained_cfg_overlay).to_dict()
    cfg["architecture"] = ENTRY_POINT
    inner.pretrained_cfg = cfg
    inner.pretrained_model_args = pretrained_model_args or {}
    if pretrained:
        load_pretrained(
            inner, pretrained_cfg=cfg, num_classes=inner.num_classes, in_chans=inner.patch_embed.proj.in_channels,
            filter_fn=filter_checkpoint, strict=True, cache_dir=cache_dir,
        )
    return model


def resample_linformer_projections(state: dict[str, torch.Tensor], model: nn.Module) -> list[str]:
    """Resample, in place, Linformer projections of `state` stored at another patch grid to the
    grid of `model`'s layers (`resample_projection`, as position embeddings are resampled);
    returns the keys resampled."""
    resized = []
    for name, module in model.named_modules():
        if not isinstance(module, LinformerAttention):
            continue
        for param in ("proj_k", "proj_v"):
            key = f"{name}.{param}"
            own = getattr(module, param)
            tensor = state.get(key)
            if own is None or tensor is None or tensor.dim() != 4 or tensor.shape == own.shape:
                continue
            if tensor.shape[:2] == own.shape[:2]:
                state[key] = resample_projection(tensor.float(), tuple(own.shape[-2:])).to(tensor.dtype)
                resized.append(key)
    return resized


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
    is re-initialised and reported; as timm's `load_pretrained` does, an input convolution for
    another channel count is adapted (`adapt_input_conv`), and position embeddings and Linformer
    projections of another grid are resampled (the latter reported as adapted); any other shape
    mismatch is an error naming the tensors.
    """
    if source is True:
        reference = timm.create_model(model_name, pretrained=True, **model_kwargs)
        state, label = reference.state_dict(), f"timm hub ({model_name})"
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights file {str(path)!r} does not exist")
        # checkpoint_filter_fn reads only shapes and settings; .npz files are loaded into it
        device = "cpu" if path.suffix.lower() == ".npz" else "meta"
        with torch.device(device):
            reference = timm.create_model(model_name, pretrained=False, **{**model_kwargs, "device": device})
        state, label = _read_state_dict(path, reference), str(path)

    own = model.state_dict()
    report = LoadReport(source=label)
    report.adapted = resample_linformer_projections(state, model)
    first_conv = f"{model.default_cfg.get('first_conv', 'patch_embed.proj')}.weight"
    weight = state.get(first_conv)
    if weight is not None and first_conv in own and weight.dim() == 4 and weight.shape[1] != own[first_conv].shape[1]:
        state[first_conv] = adapt_input_conv(own[first_conv].shape[1], weight)  # timm's load_pretrained adaptation
        report.adapted.append(first_conv)
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
