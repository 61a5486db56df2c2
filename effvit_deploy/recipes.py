"""Reading the YAML files a user edits (the recipes in train/, export/ and serve/, and any
`--config` file): one reader and one key check for every command.

`read_mapping` reads a file as a mapping with YAML 1.2 numbers (PyYAML alone reads `1e-3`,
without a dot, as a string: the classic learning-rate typo) and refuses, in one line naming the
file, one that is missing, a folder, not text, not YAML or not a mapping. `unknown_keys` names
the keys that are not accepted, their close matches and the valid ones. effvit-train reads its recipe
through them (`effvit_deploy.train.config`, keys are recipe keys), effvit-export, effvit-bench
and the study their `--config` files (`effvit_deploy.cli.options`, keys are long option names).
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import yaml


class RecipeError(ValueError):
    """A YAML file, key or value that cannot be used; the message names it and the fix (exit 2).
    effvit-train knows it as `train.ConfigError`."""


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: `1e-3` is a number, as in every other YAML 1.2 reader."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.inf|\.Inf|\.INF|\.nan|\.NaN|\.NAN)$"),
    list("-+0123456789."),
)


def read_yaml(text: str) -> Any:
    """`text` as YAML with YAML 1.2 numbers; yaml.YAMLError when it is not YAML."""
    return yaml.load(text, Loader=_Loader)


def read_mapping(path: Union[str, Path], label: str, example: str, kind: str = "a file", where: str = "") -> dict:
    """The mapping in the YAML file `path` ({} when empty). `label` names the file in messages
    ("recipe", "--config"), `example` shows a valid line ("epochs: 3"), `kind` what a folder was
    given instead of, `where` where such files live. RecipeError otherwise."""
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"{label} {path} is a folder, expected {kind}")
    if not path.is_file():
        raise RecipeError(f"{label} {path} does not exist{where}")
    try:
        raw = read_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{label} {path} is not valid YAML ({' '.join(str(exc).split())})") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{label} {path} is not a text file: give a YAML file with lines like {example}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{label} {path} must be a YAML mapping of keys to values, e.g. {example}")
    return raw


def unknown_keys(keys: Sequence[str], valid: Iterable[str], where: str, noun: str = "key") -> RecipeError:
    """The error for `keys`, which are none of `valid`: each one's close matches and every valid key."""
    valid = list(valid)
    hints = []
    for key in keys:
        close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
        if close:
            hints.append(f" Did you mean {' or '.join(close)}" + (f" (for {key!r})?" if len(keys) > 1 else "?"))
    named = ", ".join(repr(k) for k in keys)
    return RecipeError(f"unknown {noun}{'s' if len(keys) > 1 else ''} {named} in {where}.{''.join(hints)} "
                       f"Valid: {', '.join(valid)}")
