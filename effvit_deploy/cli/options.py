"""One way to read a command's options: a YAML file of long option names (`--config`) becomes
the parser's defaults (`set_defaults`) and the command line overrides it.

    effvit-bench --config serve/bench_cpu_vits.yaml --repeats 2
    effvit-export runs/x --config export/tensorrt.yaml --max-res 512
    python -m effvit_deploy.pipeline --config my_study.yaml --redo

A key is a long option name with `_` or `-` (`batch_sizes`, `max-res`); a list is read as the
option's comma list and a mapping as `key:value` pairs, each through the option's own `type`, so a
value written as text means the same in the file as on the command line. The file is read and its
keys checked by the one reader and key check of every command (`effvit_deploy.recipes`, which
effvit-train's recipe and `key=value` overrides go through too): a key that names no option, a
file that is missing, a folder, not text, not YAML or not a mapping is a usage error (exit 2)
naming the file.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Optional

from ..recipes import RecipeError, read_mapping, unknown_keys

_NOT_KEYS = ("help", "config", "debug")


def positive_list(cast: Callable[[str], Any]) -> Callable[[str], list]:
    """An argparse `type` for a comma list of positive `cast` values: `positive_list(int)` reads
    "128,192" as [128, 192]; text that is not one, or a value <= 0, is an ArgumentTypeError (exit 2)."""
    noun = {int: "integers", float: "numbers"}.get(cast, "values")

    def parse(text: str) -> list:
        try:
            values = [cast(v) for v in str(text).split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {noun}, got {text!r}") from None
        if not values or min(values) <= 0:
            raise argparse.ArgumentTypeError(f"expected positive {noun}, got {text!r}")
        return values

    return parse


def _value(action: argparse.Action, value: Any) -> Any:
    if action.type is None and action.nargs in ("*", "+") and isinstance(value, list):
        return [str(v) for v in value]  # a list of plain words (recipe overrides: [epochs=2])
    if isinstance(value, list):
        value = ",".join(map(str, value))
    elif isinstance(value, dict):
        value = ",".join(f"{k}:{v}" for k, v in value.items())
    if action.type is None or isinstance(value, bool) or value is None:
        return value
    if not isinstance(value, str):  # a YAML number stays as read, unless the option takes a list (`resolutions: 224`)
        converted = action.type(str(value))
        return converted if isinstance(converted, (list, dict)) else value
    if action.nargs in ("*", "+"):
        return [action.type(part.strip()) for part in str(value).split(",") if part.strip()]
    return action.type(value)


def parse_with_config(parser: argparse.ArgumentParser, argv: Optional[list[str]], example: str) -> argparse.Namespace:
    """Parse `argv`; when `--config FILE` is given, FILE's keys become defaults and `argv` is parsed
    again so that flags override them. `example` ("resolutions: [224]") goes into the message for a
    file that is not a mapping. Exits 2 through `parser.error` on a bad file or key."""
    args = parser.parse_args(argv)
    if not getattr(args, "config", None):
        return args
    actions = {a.dest: a for a in parser._actions if a.dest not in _NOT_KEYS}
    try:
        raw = read_mapping(args.config, "--config", example)
        unknown = sorted({str(k).replace("-", "_") for k in raw} - set(actions))
        if unknown:
            raise unknown_keys(unknown, sorted(actions), args.config, noun="option")
    except RecipeError as exc:
        parser.error(str(exc))
    path = Path(args.config)
    defaults = {}
    for key, value in raw.items():
        key = str(key).replace("-", "_")
        try:
            defaults[key] = _value(actions[key], value)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            parser.error(f"--config {path}: {key}: {exc}")
    parser.set_defaults(**defaults)
    return parser.parse_args(argv)
