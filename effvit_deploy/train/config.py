"""Training recipes: a YAML file over the defaults below, then `key=value` overrides.

A recipe may only name keys that exist here (a typo is an error naming the key and its close
matches), except inside the free-form maps `model_kwargs` (timm model arguments), the
per-mechanism maps of `attention_kwargs`, and `aug` (timm transform and Mixup arguments,
checked by the data module). Overrides use dotted paths (`optim.lr=1e-3`) and YAML values
(`epochs=3`, `aug=null`, `model_kwargs.depth=4`), like detectron2's and timm's configs.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import yaml

from ..attention import ATTENTIONS
from ..data import DataSpec
from ..recipes import RecipeError, read_mapping, read_yaml, unknown_keys


ConfigError = RecipeError  # a recipe or override that cannot be used; the message names the key and the fix


DEFAULTS: dict[str, Any] = {
    "model": "vit_small_patch16_224",
    "attention": "exact",
    "pretrained": False,  # false, true (timm hub), or a local weights file
    "init_from": None,  # a finished run directory: start from its weights with this run's attention
    "img_size": 224,
    "model_kwargs": {},  # timm model arguments: depth, embed_dim, num_heads, patch_size, drop_path_rate, ...
    "attention_kwargs": {name: {} for name in ATTENTIONS},  # per mechanism, used when it is trained
    # effvit_deploy.data.DataSpec fields (name: digits | synthetic | folder) + the bad-image policy
    # (skip | error) and the policy for a class folder with no readable image (error | drop)
    "data": {**DataSpec("digits").to_dict(), "on_bad_image": "skip", "on_empty_class": "error"},
    "aug": None,  # null: no augmentation; a map: timm create_transform keys + mixup/cutmix/label_smoothing
    "epochs": 10,
    "batch_size": 128,  # global: summed over DDP ranks, per optimizer micro-step
    "eval_batch_size": None,  # global; default batch_size
    "accum_steps": 1,
    "num_workers": 4,
    "seed": 0,
    "deterministic": False,
    "device": "auto",  # auto | cpu | cuda
    "threads": None,  # CPU threads per process (null: torch's default, split between torchrun's local ranks)
    "optim": {
        "opt": "adamw",
        "lr": 5e-4,
        "weight_decay": 0.05,
        "layer_decay": None,
        "momentum": 0.9,
        "betas": None,
        "eps": None,
    },
    "sched": {
        "sched": "cosine",
        "warmup_epochs": 0,
        "warmup_lr": 1e-6,
        "min_lr": 1e-6,
        "cooldown_epochs": 0,
    },
    "clip_grad": None,  # max gradient norm
    "amp": {"enabled": False, "dtype": "bfloat16"},  # float16 adds a GradScaler (CUDA only)
    "ema": {"enabled": False, "decay": 0.9998},
    "compile": False,
    "log_interval": 50,  # optimizer steps between log lines when stdout is not a terminal
}

FREE_FORM = ("model_kwargs", "aug")


def _dotted_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        keys.append(prefix + key)
        if isinstance(value, dict) and key not in FREE_FORM:
            keys.extend(_dotted_keys(value, prefix + key + "."))
    return keys


def _is_free(path: tuple[str, ...]) -> bool:
    """Inside a free-form map: any key is accepted (checked later by timm or the data module)."""
    return (path[0] in FREE_FORM and len(path) >= 2) or (path[0] == "attention_kwargs" and len(path) >= 3)


def _merge(base: dict[str, Any], update: dict[str, Any], where: str, path: tuple[str, ...] = ()) -> None:
    for key, value in update.items():
        full = (*path, str(key))
        if full[0] == "attention_kwargs" and len(full) == 2 and key not in ATTENTIONS:
            raise ConfigError(
                f"attention_kwargs.{key} in {where}: {key!r} is not a mechanism; use one of {', '.join(ATTENTIONS)}"
            )
        if not _is_free(full) and key not in base:
            raise unknown_keys([".".join(full)], _dotted_keys(DEFAULTS), where, noun="recipe key")
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, where, full)
        else:
            base[key] = copy.deepcopy(value)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`optim.lr=1e-3` -> (["optim", "lr"], 0.001); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. optim.lr=1e-3 or epochs=3)")
    key, raw = text.split("=", 1)
    if not key or "" in key.split("."):
        raise ConfigError(f"override {text!r} has no valid key before '=' (e.g. optim.lr=1e-3)")
    try:
        return key.split("."), read_yaml(raw) if raw else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "not a YAML value"
        raise ConfigError(
            f"override {text!r}: the value {raw!r} is not valid YAML ({problem}); quote the whole argument "
            f"in the shell, e.g. '{key}={{a: 1}}' or {key}=\"text\""
        ) from None


def _nest(path: list[str], value: Any) -> dict[str, Any]:
    for key in reversed(path):
        value = {key: value}
    return value


def load_config(
    path: Optional[Union[str, Path]] = None,
    overrides: Iterable[str] = (),
    attention: Optional[str] = None,
) -> dict[str, Any]:
    """The fully resolved config: defaults <- recipe file <- overrides (<- attention)."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        recipe = read_mapping(path, "recipe", "epochs: 3", kind="a YAML file such as train/digits.yaml",
                              where=" (recipes live in train/, e.g. train/digits.yaml)")
        _merge(config, recipe, str(path))
    for text in overrides:
        keys, value = parse_override(text)
        _merge(config, _nest(keys, value), f"override {text!r}")
    if attention is not None:
        config["attention"] = attention
    validate(config)
    return config


# Type and range of every fixed recipe key, checked before any work (a wrong value fails in
# seconds with its key named, not hours later inside timm or torch): (kind, low, high, nullable).
# kind: "int", "float" (an int is accepted), "bool", "str", "pair" (two floats); low/high inclusive.
RULES: dict[str, tuple[str, Optional[float], Optional[float], bool]] = {
    "model": ("str", None, None, False),
    "img_size": ("int", 1, None, False),
    "epochs": ("int", 1, None, False),
    "batch_size": ("int", 1, None, False),
    "eval_batch_size": ("int", 1, None, True),
    "accum_steps": ("int", 1, None, False),
    "num_workers": ("int", 0, None, False),
    "seed": ("int", 0, 2**32 - 1, False),
    "deterministic": ("bool", None, None, False),
    "threads": ("int", 1, None, True),
    "optim.opt": ("str", None, None, False),
    "optim.lr": ("float", 0, None, False),
    "optim.weight_decay": ("float", 0, None, False),
    "optim.layer_decay": ("float", 0, 1, True),
    "optim.momentum": ("float", 0, 1, False),
    "optim.betas": ("pair", 0, 1, True),
    "optim.eps": ("float", 0, None, True),
    "sched.sched": ("str", None, None, False),
    "sched.warmup_epochs": ("int", 0, None, False),
    "sched.warmup_lr": ("float", 0, None, False),
    "sched.min_lr": ("float", 0, None, False),
    "sched.cooldown_epochs": ("int", 0, None, False),
    "clip_grad": ("float", 0, None, True),
    "amp.enabled": ("bool", None, None, False),
    "ema.enabled": ("bool", None, None, False),
    "ema.decay": ("float", 0, 1, False),
    "compile": ("bool", None, None, False),
    "log_interval": ("int", 1, None, False),
    "data.name": ("str", None, None, False),
    "data.root": ("str", None, None, True),
    "data.num_classes": ("int", 2, None, False),  # a one-class classifier scores 1.0 by construction
    "data.train_size": ("int", 1, None, False),
    "data.val_size": ("int", 1, None, False),
    "data.seed": ("int", 0, None, False),
}
CHOICES = {
    "device": ("auto", "cpu", "cuda"), "amp.dtype": ("bfloat16", "float16"), "data.on_bad_image": ("skip", "error"),
    "data.on_empty_class": ("error", "drop"),
}
_KIND_TEXT = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
              "pair": "a list of two numbers"}


def _lookup(config: dict[str, Any], key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = value[part]
    return value


def _fits(kind: str, value: Any, low: Optional[float], high: Optional[float]) -> bool:
    if kind == "pair":
        return isinstance(value, (list, tuple)) and len(value) == 2 and all(_fits("float", v, low, high) for v in value)
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN
    else:
        ok = isinstance(value, {"bool": bool, "str": str}[kind])
    return ok and (low is None or value >= low) and (high is None or value <= high)


def _check_value(config: dict[str, Any], key: str, rule: tuple[str, Optional[float], Optional[float], bool]) -> None:
    kind, low, high, nullable = rule
    value = _lookup(config, key)
    if (value is None and nullable) or _fits(kind, value, low, high):
        return
    bounds = [f">= {low}" if low is not None else "", f"<= {high}" if high is not None else ""]
    wanted = _KIND_TEXT[kind] + (f" ({' and '.join(b for b in bounds if b)})" if any(bounds) else "")
    wanted += " or null" if nullable else ""
    default = _lookup(DEFAULTS, key)
    example = f"; e.g. {key}={default}" if default is not None and not isinstance(default, (list, dict)) else ""
    raise ConfigError(f"{key} must be {wanted}, got {value!r} ({type(value).__name__}){example}")


def validate(config: dict[str, Any]) -> None:
    """Type, range and choice of every fixed key (RULES, CHOICES), before any data or model is
    touched; checks that need them (patch size, data folders, weights) come in `train`."""
    if config["attention"] not in ATTENTIONS:
        close = difflib.get_close_matches(str(config["attention"]), list(ATTENTIONS), n=2)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"unknown attention {config['attention']!r}.{hint} Valid: {', '.join(ATTENTIONS)} (or all)")
    for section in ("optim", "sched", "amp", "ema", "data", "attention_kwargs", "model_kwargs"):
        if not isinstance(config[section], dict):
            raise ConfigError(f"{section} must be a mapping of keys to values, got {config[section]!r}")
    for key, choices in CHOICES.items():
        if _lookup(config, key) not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {_lookup(config, key)!r}")
    for key, rule in RULES.items():
        if key.startswith("data.") and key.split(".")[1] not in config["data"]:
            continue
        _check_value(config, key, rule)
    if not isinstance(config["pretrained"], (bool, str)):
        raise ConfigError(f"pretrained must be false, true (timm hub) or a weights file path, got {config['pretrained']!r}")
    if isinstance(config["pretrained"], str) and Path(config["pretrained"]).expanduser().is_dir():
        raise ConfigError(f"pretrained={config['pretrained']} is a folder, expected a weights file "
                          "(.safetensors, .pth or .npz)")
    if config["init_from"] is not None and (not isinstance(config["init_from"], str) or config["pretrained"]):
        raise ConfigError(
            f"init_from must be one run directory (a string) and excludes pretrained=, got init_from="
            f"{config['init_from']!r} with pretrained={config['pretrained']!r}"
        )
    if config["aug"] is not None and not isinstance(config["aug"], dict):
        raise ConfigError("aug must be null (no augmentation) or a mapping of timm augmentation keys")
    for name, kwargs in config["attention_kwargs"].items():
        if kwargs is not None and not isinstance(kwargs, dict):
            raise ConfigError(f"attention_kwargs.{name} must be a mapping of mechanism arguments, got {kwargs!r}")


def model_arguments(config: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for `build_model`: timm model arguments + the trained mechanism's own."""
    return {
        "img_size": config["img_size"],
        **config["model_kwargs"],
        **(config["attention_kwargs"].get(config["attention"]) or {}),
    }


def dump_config(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False)
