"""Files the library reads at run time ship inside the package, so a non-editable install has them."""
from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import effvit_deploy
from effvit_deploy.data.imagenet100 import DEFAULT_CLASS_FILE, read_class_list

ROOT = Path(effvit_deploy.__file__).parent


def test_imagenet100_class_list_is_package_data():
    patterns = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["effvit_deploy"]
    relative = DEFAULT_CLASS_FILE.resolve().relative_to(ROOT.resolve()).as_posix()
    assert any(fnmatch.fnmatch(relative, p) for p in patterns), f"{relative} not matched by package-data {patterns}"
    assert len(read_class_list()) == 100
