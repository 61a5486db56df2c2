"""Cluttered digits: deterministic, the same per-patch content at every canvas size, no source digit in both splits."""
import numpy as np
import pytest

from effvit_deploy.cli.data import main as data_main
from effvit_deploy.data import ClutteredDigits, DataError, DataSpec, build_datasets, digits_split


def test_cluttered_images_are_deterministic_per_index():
    a, b = ClutteredDigits("train", 6, 96, seed=0), ClutteredDigits("train", 6, 96, seed=0)
    for i in range(6):
        assert np.array_equal(np.asarray(a.image(i)), np.asarray(b.image(i)))
        assert a.label(i) == b.label(i)
    other_seed = ClutteredDigits("train", 6, 96, seed=1)
    assert not np.array_equal(np.asarray(a.image(0)), np.asarray(other_seed.image(0)))


def test_cluttered_patches_see_the_same_thing_at_every_canvas_size():
    """Fixed pixel scale: image i has the same digit, drawn the same size and patch-aligned, on
    every canvas; a larger canvas is a larger scene with the same clutter density."""
    from effvit_deploy.data.cluttered import DIGIT_PIXEL, FRAGMENTS_PER_64PX, LATTICE

    sizes = (64, 128, 256)
    sets = {size: ClutteredDigits("val", 200, size) for size in sizes}
    for i in range(20):
        digits = [sets[size].layout(i)[-1] for size in sizes]
        assert len({(d.source, d.size) for d in digits}) == 1 and digits[0].size == DIGIT_PIXEL[0]
        for size, d in zip(sizes, digits):
            assert d.x % LATTICE == 0 and d.y % LATTICE == 0 and d.x >= LATTICE and d.x + 8 * d.size <= size - LATTICE
            crop = np.asarray(sets[size].image(i).convert("L"))[int(d.y):int(d.y + 8 * d.size), int(d.x):int(d.x + 8 * d.size)]
            reference = np.asarray(sets[64].image(i).convert("L"))[int(digits[0].y):int(digits[0].y + 8 * d.size),
                                                                   int(digits[0].x):int(digits[0].x + 8 * d.size)]
            assert np.array_equal(crop, reference) and crop.max() > 100  # the same pixels, not a rescaled scene
    for size in sizes:
        fragments = np.mean([len(sets[size].layout(i)) - 1 for i in range(200)])
        assert fragments == pytest.approx(FRAGMENTS_PER_64PX * (size / 64) ** 2, rel=0.25)


def test_cluttered_rejects_a_canvas_too_small():
    with pytest.raises(ValueError, match="img_size"):
        ClutteredDigits("val", 4, 16)


def test_cluttered_splits_share_no_handwritten_sample():
    train, val = ClutteredDigits("train", 3000, 32), ClutteredDigits("val", 800, 32)
    train_sources = set().union(*(train.sources(i) for i in range(len(train))))
    val_sources = set().union(*(val.sources(i) for i in range(len(val))))
    assert train_sources.isdisjoint(val_sources)
    train_pool, val_pool = digits_split(0)
    assert train_sources <= set(train_pool.tolist()) and val_sources <= set(val_pool.tolist())


def test_cluttered_labels_are_the_whole_digit_and_balanced():
    ds = ClutteredDigits("val", 360, 32)
    labels = ds.labels
    _, digit_labels = __import__("effvit_deploy.data.digits", fromlist=["load_digits_uint8"]).load_digits_uint8()
    assert all(labels[i] == digit_labels[ds.layout(i)[-1].source] for i in range(0, 360, 37))
    counts = np.bincount(labels, minlength=10)
    assert counts.min() >= 30 and counts.max() <= 40


def test_cluttered_is_a_data_set_name_for_recipes():
    spec = DataSpec.from_arg("cluttered")
    assert spec.name == "cluttered"
    train, val, classes = build_datasets(DataSpec("cluttered", train_size=8, val_size=4), 48, (0.5,) * 3, (0.5,) * 3)
    assert classes == [str(i) for i in range(10)] and len(train) == 8 and len(val) == 4
    x, y = val[0]
    assert tuple(x.shape) == (3, 48, 48) and 0 <= y < 10
    with pytest.raises(DataError, match="train_size"):
        DataSpec("cluttered", train_size=0)


def test_effvit_data_cluttered_writes_an_image_folder(tmp_path, capsys):
    out = tmp_path / "cluttered"
    assert data_main(["cluttered", "--out", str(out), "--img-size", "40", "--train-size", "12", "--val-size", "5"]) == 0
    assert len(list((out / "train").rglob("*.png"))) == 12 and len(list((out / "val").rglob("*.png"))) == 5
    first = sorted((out / "val").rglob("00000.png"))[0]
    assert first.parent.name == str(ClutteredDigits("val", 5, 40).label(0))
    assert "val 5 images at 40x40 px" in capsys.readouterr().out
