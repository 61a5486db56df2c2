"""Train and serve see the same pixels: one decoder for the training loader, calibration/bench
(the eval data set), `effvit-data check` and the demo, on the files a plain convert("RGB") gets
wrong (16-bit, EXIF-rotated, palette with transparency, LA, CMYK, float)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from effvit_deploy.data import DataSpec, build_datasets, build_eval_dataset, find_bad_images
from effvit_deploy.data.folder import CheckedImageFolder
from effvit_deploy.demo import load_image

HALF = (0.5, 0.5, 0.5)


def _ramp(h: int = 24, w: int = 32) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8)


def _sixteen_bit(path: Path) -> None:
    values = (np.arange(24 * 32).reshape(24, 32) * 5 + 1000).astype(np.uint16)  # 12-bit-ish range
    Image.fromarray(values).save(path)


def _exif_rotated(path: Path) -> None:
    wide = Image.new("RGB", (32, 24), (200, 30, 40))
    wide.paste((0, 0, 255), (0, 0, 8, 24))
    exif = Image.Exif()
    exif[0x0112] = 6
    wide.save(path, exif=exif.tobytes(), quality=95)


def _palette(path: Path) -> None:
    rgb = Image.merge("RGB", [Image.fromarray(_ramp()), Image.fromarray(_ramp()[::-1]), Image.new("L", (32, 24), 90)])
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(path, transparency=int(np.asarray(pal)[0, 0]))


def _la(path: Path) -> None:
    alpha = np.zeros((24, 32), np.uint8)
    alpha[:, 16:] = 255
    alpha[:12, :16] = 128
    Image.merge("LA", [Image.fromarray(_ramp()), Image.fromarray(alpha)]).save(path)


def _cmyk(path: Path) -> None:
    channels = [Image.fromarray(_ramp()), Image.new("L", (32, 24), 40), Image.fromarray(_ramp()[::-1])]
    Image.merge("RGB", channels).convert("CMYK").save(path, quality=95)


def _float(path: Path) -> None:
    Image.fromarray((np.arange(24 * 32, dtype=np.float32).reshape(24, 32) / 7.0 - 3.0), mode="F").save(path)


MAKERS = {"sixteen.png": _sixteen_bit, "rotated.jpg": _exif_rotated, "palette.png": _palette,
          "la.png": _la, "cmyk.jpg": _cmyk, "float.tif": _float}


@pytest.fixture
def folder(tmp_path) -> Path:
    for split in ("train", "val"):
        d = tmp_path / "data" / split / "a"
        d.mkdir(parents=True)
        for name, make in MAKERS.items():
            make(d / name)
        (d.parent / "b").mkdir()  # a second class: training refuses a one-class data set
        _palette(d.parent / "b" / "palette.png")
    return tmp_path / "data"


def test_training_loader_and_demo_decode_to_identical_arrays(folder):
    train = CheckedImageFolder(folder / "train", on_bad_image="error")
    assert len(train) == len(MAKERS) + 1
    for index, (path, _) in enumerate(train.samples):
        loader_image, _ = train[index]
        a, b = np.asarray(loader_image), np.asarray(load_image(path))
        assert a.shape == b.shape and a.dtype == b.dtype == np.uint8, path
        assert np.array_equal(a, b), path


def test_eval_tensors_used_by_training_calibration_and_bench_are_the_demo_tensors(folder):
    _, val_train, _ = build_datasets(DataSpec("folder", root=str(folder)), 32, HALF, HALF, on_bad_image="error")
    val_eval, _ = build_eval_dataset(DataSpec("folder", root=str(folder)), 32, HALF, HALF, on_bad_image="error")
    for index, (path, _) in enumerate(val_eval.samples):
        demo_x = val_eval.transform(load_image(path))
        assert torch.equal(val_train[index][0], demo_x) and torch.equal(val_eval[index][0], demo_x), path


def test_sixteen_bit_and_float_keep_their_contrast_in_training(folder):
    train = CheckedImageFolder(folder / "train", on_bad_image="error")
    for index, (path, _) in enumerate(train.samples):
        if Path(path).name in ("sixteen.png", "float.tif"):
            pixels = np.asarray(train[index][0])[..., 0]
            assert pixels.min() == 0 and pixels.max() == 255, path  # convert("RGB") gives solid white / clipped
            assert len(np.unique(pixels)) > 100, path


def test_exif_orientation_is_applied_in_training(folder):
    train = CheckedImageFolder(folder / "train", on_bad_image="error")
    index = [Path(p).name for p, _ in train.samples].index("rotated.jpg")
    image = np.asarray(train[index][0])
    assert image.shape[:2] == (32, 24)  # portrait: rotated upright
    assert image[1, 12, 2] > 200 and image[1, 12, 0] < 60  # the blue left band is now on top


def test_check_reports_what_decoding_changes(folder, capsys):
    report = find_bad_images(folder / "train")
    notes = {Path(p).name: note for p, note in report.converted}
    assert report.bad == []
    assert "rescaled" in notes["sixteen.png"] and "rescaled" in notes["float.tif"]
    assert "EXIF orientation 6" in notes["rotated.jpg"]
    assert "transparent" in notes["palette.png"] and "transparent" in notes["la.png"]
    assert "cmyk.jpg" not in notes  # a plain conversion is not a change worth reporting
    from effvit_deploy.cli.data import main

    assert main(["check", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "CONVERTED" in out and "rotated.jpg: EXIF orientation 6 applied" in out
