"""build_model(): a timm VisionTransformer whose attention is one of `ATTENTIONS`.

The model is timm's own (`timm.create_model`), built with `attn_layer=partial(Mechanism, ...)`
and `dynamic_img_size=True`, so every timm feature (pretrained configs, position-embedding
resampling, forward_features/forward_head, EMA, grad checkpointing) keeps working. Two
additions: a forward pre-hook on the patch embedding that tells every attention layer the
current patch grid (`GridBroadcast`), and weight loading that copies a timm checkpoint into
the swapped model and reports which tensors were loaded and which are new to the mechanism.
"""
from __future__ import annotations

import difflib
import inspect
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import timm
import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
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


class GridBroadcast:
    """Forward pre-hook on `patch_embed`: sets `.grid = (H, W)` on every attention layer.

    The attention layers only see [B, N, C]; this carries the patch grid of the current input to
    them without changing timm's forward. It is a plain object (not a closure) so `deepcopy`
    (EMA, torch.compile) maps its targets to the copied modules, and it runs as ordinary Python
    under `torch.export`, where H and W stay symbolic.
    """

    def __init__(self, targets: list[TimmAttention], patch_size: tuple[int, int]) -> None:
        self.targets = targets
        self.patch_size = patch_size

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        if x.dim() != 4:
            raise ValueError(f"expected images [B, C, H, W], got a tensor of shape {tuple(x.shape)}")
        H, W = x.shape[-2:]
        ph, pw = self.patch_size
        if isinstance(H, int) and isinstance(W, int) and (H % ph or W % pw):
            fix_h, fix_w = max(ph, round(H / ph) * ph), max(pw, round(W / pw) * pw)
            raise ValueError(
                f"input {H}x{W} is not a multiple of the patch size {ph}x{pw}: "
                f"resize or crop it to e.g. {fix_h}x{fix_w}"
            )
        grid = (H // ph, W // pw)
        for target in self.targets:
            target.grid = grid


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
    targets = [m for m in model.modules() if isinstance(m, TimmAttention)]
    model.patch_embed.register_forward_pre_hook(GridBroadcast(targets, tuple(model.patch_embed.patch_size)))
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
