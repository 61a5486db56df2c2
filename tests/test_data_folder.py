"""ImageFolder data sets: errors before training, and bad images skipped/counted or raised."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from effvit_deploy.data import BadImageError, BadImageWarning, DataError, DataSpec, build_datasets, build_eval_dataset, collate_skip_bad

HALF = (0.5, 0.5, 0.5)


def png_bytes(value: int, size: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (value, 255 - value, 0)).save(buf, format="PNG")
    return buf.getvalue()


def make_folder(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    """root/<split>/<class>/<i>.png with the given image count per class (0: an empty folder)."""
    for split, classes in layout.items():
        for c, n in classes.items():
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (d / f"{i}.png").write_bytes(png_bytes(20 * i))
    return root


def build(root: Path, **kw):
    return build_datasets(DataSpec("folder", root=str(root)), 16, HALF, HALF, **kw)


def test_folder_loads_both_splits_with_shared_class_order(tmp_path):
    root = make_folder(tmp_path / "d", {"train": {"cat": 3, "dog": 2}, "val": {"cat": 1, "dog": 1}})
    train, val, names = build(root)
    assert names == ["cat", "dog"] and (len(train), len(val)) == (5, 2)
    assert val.class_to_idx == train.class_to_idx
    x, y = train[4]
    assert x.shape == (3, 16, 16) and y == 1


def test_hidden_folders_are_not_classes(tmp_path):
    root = make_folder(tmp_path / "d", {"train": {"a": 1, "b": 1, ".ipynb_checkpoints": 1}, "val": {"a": 1, "b": 1}})
    train, val, names = build(root)
    assert names == ["a", "b"] and len(train) == 2


@pytest.mark.parametrize(
    "layout, message",
    [
        (None, "does not exist"),
        ({"train": {"a": 1}}, "has no val/ split"),
        ({"val": {"a": 1}}, "has no train/ split"),
        ({"train": {"a": 0, "b": 0}, "val": {"a": 1, "b": 1}}, "is empty: no image files"),
        ({"train": {"a": 1, "b": 1, "c": 1}, "val": {"a": 1, "b": 1}}, "in train/ but not val/: ['c']"),
        ({"train": {"a": 1}, "val": {"a": 1, "z": 1}}, "in val/ but not train/: ['z']"),
        ({"train": {"a": 1, "b": 1}, "val": {"a": 1, "b": 0}}, "in train/ but not val/: ['b']"),
    ],
    ids=["missing-dir", "missing-val", "missing-train", "empty-split", "extra-train-class",
         "extra-val-class", "empty-class-folder"],
)
def test_folder_errors_before_training(tmp_path, layout, message):
    root = tmp_path / "d"
    if layout is not None:
        make_folder(root, layout)
    with pytest.raises(DataError) as info:
        build(root)
    assert message in str(info.value)


def test_eval_dataset_needs_only_val(tmp_path):
    root = make_folder(tmp_path / "d", {"val": {"a": 2, "b": 1}})
    val, names = build_eval_dataset({"name": "folder", "root": str(root), "img_size": 16}, 16, HALF, HALF)
    assert names == ["a", "b"] and len(val) == 3


def with_bad_images(tmp_path: Path) -> Path:
    """4 good images and 2 bad ones: garbage bytes with a .jpg name and a truncated PNG."""
    root = make_folder(tmp_path / "d", {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}})
    (root / "train" / "a" / "garbage.jpg").write_bytes(b"not an image at all" * 10)
    good = png_bytes(100, size=64)
    (root / "train" / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    return root


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_images_are_skipped_and_counted_through_a_dataloader(tmp_path, num_workers):
    train, _, _ = build(with_bad_images(tmp_path))
    assert len(train) == 6
    loader = DataLoader(train, batch_size=4, num_workers=num_workers, collate_fn=collate_skip_bad)
    if num_workers == 0:
        with pytest.warns(BadImageWarning) as warned:
            batches = list(loader)
        named = " ".join(str(w.message) for w in warned)
        assert "garbage.jpg" in named and "truncated.png" in named
    else:
        batches = list(loader)
    assert sum(n for _, _, n in batches) == 2
    assert sum(len(y) for _, y, _ in batches) == 4
    assert all(x.shape[1:] == (3, 16, 16) for x, _, _ in batches)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_image_raises_naming_the_file_in_error_mode(tmp_path, num_workers):
    train, _, _ = build(with_bad_images(tmp_path), on_bad_image="error")
    bad = next(i for i, (p, _) in enumerate(train.samples) if p.endswith("garbage.jpg"))
    with pytest.raises(BadImageError, match="garbage.jpg") as info:
        train[bad]
    assert info.value.path.endswith("garbage.jpg")
    loader = DataLoader(train, batch_size=2, num_workers=num_workers, collate_fn=collate_skip_bad)
    with pytest.raises(BadImageError, match="garbage.jpg"):
        list(loader)


def test_a_batch_of_only_bad_images_is_empty_and_counted():
    x, y, n = collate_skip_bad([None, None])
    assert (x.numel(), y.numel(), n) == (0, 0, 2)
    x, y, n = collate_skip_bad([(torch.zeros(3, 4, 4), 1), None])
    assert x.shape == (1, 3, 4, 4) and y.tolist() == [1] and n == 1


def test_on_bad_image_value_is_checked(tmp_path):
    root = make_folder(tmp_path / "d", {"train": {"a": 1}, "val": {"a": 1}})
    with pytest.raises(DataError, match="on_bad_image must be one of"):
        build(root, on_bad_image="ignore")
