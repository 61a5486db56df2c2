"""DataSpec: which data set a run uses, as stored in a recipe and in the ModelCard's `data` dict."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from .errors import DataError

DATASETS = ("digits", "cluttered", "synthetic", "folder")
GENERATED = ("digits", "cluttered", "synthetic")  # built in memory, named by a word on the command line


@dataclass
class DataSpec:
    """A data set by name. `seed` is the data seed (digits split, generated images), kept apart
    from the training seed so that runs with different training seeds see the same data.
    `train_size`/`val_size` are the image counts of the generated sets (cluttered, synthetic).
    `exclude_classes` are class folders of a folder data set left out of both splits (set by
    training under `data.on_empty_class=drop`), recorded in model.json so later stages use the
    same classes."""

    name: str
    root: Optional[str] = None
    num_classes: int = 10
    train_size: int = 1000
    val_size: int = 200
    seed: int = 0
    exclude_classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise DataError(f"unknown data set {self.name!r}; choose one of {list(DATASETS)}")
        if self.name == "folder" and not self.root:
            raise DataError(
                "data set 'folder' needs a root: a directory with train/ and val/ class folders "
                "(e.g. one made by `effvit-data imagenet100 --out DIR`)"
            )
        if self.name in ("synthetic", "cluttered"):
            for key in ("num_classes", "train_size", "val_size"):
                if int(getattr(self, key)) < 1:
                    raise DataError(f"synthetic data needs {key} >= 1, got {getattr(self, key)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataSpec":
        """From a recipe's `data` block or a ModelCard's `data` dict (its `img_size` is ignored:
        the resolution belongs to the model). Unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"img_size"})
        if unknown:
            raise DataError(f"unknown data key(s) {unknown}; known: {sorted(known)}")
        if "name" not in d:
            raise DataError(f"the data block needs a 'name', one of {list(DATASETS)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_arg(cls, text: str) -> "DataSpec":
        """From a command-line value: a data set name (one of GENERATED), or the path of
        an ImageFolder directory with train/ and val/ (optionally written "folder:PATH"), made
        absolute so that a run's ModelCard finds it again from any working directory."""
        if text in GENERATED:
            return cls(text)
        return cls("folder", root=str(Path(text.removeprefix("folder:")).expanduser().resolve()))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict; `exclude_classes` only when set, so specs recorded before it existed compare equal."""
        d = asdict(self)
        if not d["exclude_classes"]:
            del d["exclude_classes"]
        return d
