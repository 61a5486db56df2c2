"""Build the train/val data sets a run uses, from a DataSpec and the model's preprocessing."""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional, Sequence, Union

from torch.utils.data import Dataset

from .cluttered import ClutteredDigits
from .digits import DigitsDataset
from .errors import DataError
from .folder import ON_EMPTY_CLASS, check_on_bad_image, check_same_classes, describe_unusable, open_split, unusable_classes
from .spec import DataSpec
from .synthetic import SyntheticDataset
from .transforms import build_transform


def build_datasets(
    spec: Union[DataSpec, dict[str, Any]],
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
    crop_pct: float = 0.875,
    aug: Optional[dict[str, Any]] = None,
    on_bad_image: str = "skip",
) -> tuple[Dataset, Dataset, list[str]]:
    """(train, val, class_names). Items are (CHW float tensor, int label); with
    `on_bad_image="skip"` an undecodable folder image is None (use `collate_skip_bad`).

    The train split gets the training transform (`aug`, see `build_transform`), val the eval
    transform. Folder data sets are checked up front (missing/empty split, class mismatch).
    """
    spec = spec if isinstance(spec, DataSpec) else DataSpec.from_dict(spec)
    check_on_bad_image(on_bad_image)
    train_tf = build_transform(img_size, mean, std, interpolation, crop_pct, train=True, aug=aug)
    val_tf = build_transform(img_size, mean, std, interpolation, crop_pct, train=False)
    if spec.name == "folder":
        train = open_split(spec.root, "train", train_tf, on_bad_image, spec.exclude_classes)
        val = open_split(spec.root, "val", val_tf, on_bad_image, spec.exclude_classes)
        check_same_classes(train, val)
    else:
        train, val = (_generated(spec, split, img_size, tf) for split, tf in (("train", train_tf), ("val", val_tf)))
    if len(train.classes) < 2:
        where = f" in {spec.root}" if spec.root else ""
        raise DataError(f"the {spec.name} data set{where} has {len(train.classes)} class(es) {list(train.classes)}: a "
                        "classifier needs at least two (its accuracy would be 1.0 by construction)")
    return train, val, list(train.classes)


def usable_spec(spec: DataSpec, on_empty_class: str = "error") -> DataSpec:
    """`spec` after checking that every class folder holds a readable image in both splits.

    A class with none (an empty folder, or only unreadable files) is refused naming it
    (on_empty_class="error"), or left out of both splits with a message ("drop"): the returned
    spec lists it in `exclude_classes`, which the run's model.json records. Generated data sets
    are returned unchanged.
    """
    if on_empty_class not in ON_EMPTY_CLASS:
        raise DataError(f"data.on_empty_class must be one of {list(ON_EMPTY_CLASS)}, got {on_empty_class!r}")
    if spec.name != "folder":
        return spec
    splits = {split: open_split(spec.root, split, None, "skip", spec.exclude_classes) for split in ("train", "val")}
    found = unusable_classes(splits)
    if not found:
        return spec
    problem = describe_unusable(spec.root, found)
    if on_empty_class == "error":
        raise DataError(f"{problem}; add images, remove those folders, or train with data.on_empty_class=drop "
                        "to leave them out")
    print(f"{problem}; left out of both splits (data.on_empty_class=drop)", flush=True)
    return replace(spec, exclude_classes=sorted({*spec.exclude_classes, *found}))


def build_eval_dataset(
    data: Union[DataSpec, dict[str, Any]],
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
    crop_pct: float = 0.875,
    on_bad_image: str = "skip",
    class_names: Optional[Sequence[str]] = None,
    split: str = "val",
) -> tuple[Dataset, list[str]]:
    """(val split with the eval transform, class names): what export, bench and demo evaluate
    on, from a ModelCard's `data` dict and preprocessing fields. A folder needs only val/.

    With `class_names` (the card's), a val split whose classes differ is a DataError, since the
    model's outputs would be scored against the wrong labels. `split="train"` gives the training
    images with the same eval transform (e.g. to calibrate int8 quantisation)."""
    spec = data if isinstance(data, DataSpec) else DataSpec.from_dict(data)
    val_tf = build_transform(img_size, mean, std, interpolation, crop_pct, train=False)
    if spec.name == "folder":
        val = open_split(spec.root, split, val_tf, on_bad_image, spec.exclude_classes)
    else:
        val = _generated(spec, split, img_size, val_tf)
    if class_names is not None and list(class_names) != list(val.classes):
        missing = sorted(set(class_names) - set(val.classes))
        extra = sorted(set(val.classes) - set(class_names))
        detail = f"missing from the data: {missing}; not in the model: {extra}" if missing or extra else "same classes in another order"
        raise DataError(
            f"the {spec.name} val split's {len(val.classes)} classes do not match the model's "
            f"{len(class_names)} ({detail}): evaluate on the data the model was trained on"
        )
    return val, list(val.classes)


def _generated(spec: DataSpec, split: str, img_size: int, transform) -> Dataset:
    if spec.name == "digits":
        return DigitsDataset(split, img_size, transform=transform, seed=spec.seed)
    length = spec.train_size if split == "train" else spec.val_size
    if spec.name == "cluttered":
        return ClutteredDigits(split, length, img_size, seed=spec.seed, transform=transform)
    return SyntheticDataset(split, length, spec.num_classes, img_size, seed=spec.seed, transform=transform)
