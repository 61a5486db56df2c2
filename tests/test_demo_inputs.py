"""Demo input handling and model side without a server: image modes, bad files, backends, resolutions."""
from __future__ import annotations

import struct
import zlib
from dataclasses import replace
from typing import Optional

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from conftest import make_tiny_run
from effvit_deploy.backends import BackendUnavailable, load_runner
from effvit_deploy.data import eval_transform
from effvit_deploy.demo import InputError, example_images, load_image
from effvit_deploy.demo.predict import load_variant, resolution_choices
from effvit_deploy.demo.saliency import class_token_attention, gradient_x_input, overlay, to_image

RED = (200, 30, 40)


def _saved(tmp_path, image: Image.Image, name: str, **save_kwargs):
    path = tmp_path / name
    image.save(path, **save_kwargs)
    return path


@pytest.mark.parametrize("mode,name", [
    ("RGB", "x.png"), ("RGBA", "x.png"), ("P", "x.png"), ("CMYK", "x.jpg"), ("LAB", "x.tif"),
])
def test_colour_modes_come_back_as_the_same_rgb(tmp_path, mode, name):
    rgb = Image.new("RGB", (12, 8), RED)
    image = rgb.convert("P", palette=Image.Palette.ADAPTIVE) if mode == "P" else rgb.convert(mode)
    path = _saved(tmp_path, image, name)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (12, 8)
    assert np.abs(np.asarray(out, dtype=int) - RED).max() <= 6  # JPEG/LAB rounding only


@pytest.mark.parametrize("mode", ["L", "1", "LA"])
def test_grayscale_modes_become_gray_rgb(tmp_path, mode):
    gray = Image.fromarray(np.tile(np.array([0, 255], dtype=np.uint8), (6, 5)), mode="L")
    out = np.asarray(load_image(_saved(tmp_path, gray.convert(mode), "g.png")))
    assert out.shape == (6, 10, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 255


def test_transparent_pixels_are_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    out = np.asarray(load_image(_saved(tmp_path, rgba, "t.png")))
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[3, 3]) == (255, 255, 255)
    palette = rgba.convert("P")
    palette.info["transparency"] = palette.getpixel((3, 3))
    out = np.asarray(load_image(_saved(tmp_path, palette, "p.png", transparency=palette.getpixel((3, 3)))))
    assert tuple(out[3, 3]) == (255, 255, 255)


def test_16_bit_images_keep_their_contrast(tmp_path):
    # A 12-bit-range ramp saved as 16-bit PNG: Pillow's plain convert("RGB") saturates it to white.
    ramp = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 256)
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"
    out = np.asarray(load_image(_saved(tmp_path, image, "deep.png")))[..., 0]
    assert out.min() == 0 and out.max() == 255
    assert (np.diff(out.ravel().astype(int)) > 0).all()


def test_exif_rotated_photo_is_turned_upright(tmp_path):
    wide = Image.new("RGB", (30, 10), RED)
    wide.paste((0, 0, 255), (0, 0, 5, 10))  # a blue band on the left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    out = load_image(_saved(tmp_path, wide, "r.jpg", exif=exif.tobytes(), quality=95))
    assert out.size == (10, 30)
    top = np.asarray(out)[1, 5]
    assert top[2] > 200 and top[0] < 60  # the left band is now at the top


def test_bad_files_raise_input_errors_that_name_the_problem(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    with pytest.raises(InputError, match="not an image"):
        load_image(text)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        load_image(empty)
    with pytest.raises(InputError, match="No image"):
        load_image(None)
    truncated = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), RED).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(InputError, match="cut.png"):
        load_image(truncated)


def png_bomb(width: int, height: int, rows: Optional[int] = None) -> bytes:
    """A valid grayscale PNG of zeros, width x height, compressed to a few hundred KB; with `rows`
    only that many rows are stored (the header still declares `height`)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, block = zlib.compressobj(9), b"\0" * (width + 1) * 64
    body = [packer.compress(block) for _ in range((height if rows is None else rows) // 64)]
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", b"".join(body) + packer.flush()) + chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_from_its_header_without_decoding(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(8000, 8000))  # 64 MP in ~70 KB
    assert Image.open(bomb).size == (8000, 8000)

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(InputError, match="over this demo's limit of 1,000,000"):
        load_image(bomb, max_pixels=1_000_000)
    # Over Pillow's own hard limit (2 x Image.MAX_IMAGE_PIXELS): refused when opened, same message.
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_bomb(60000, 60000, rows=64))
    with pytest.raises(InputError, match="over this demo's limit"):
        load_image(huge)


def test_pixel_limit_is_inclusive(tmp_path):
    assert load_image(_saved(tmp_path, Image.new("RGB", (100, 100)), "ok.png"), max_pixels=10_000).size == (100, 100)
    with pytest.raises(InputError, match="101x100 = 10,100 pixels"):
        load_image(_saved(tmp_path, Image.new("RGB", (101, 100)), "big.png"), max_pixels=10_000)


def test_bundled_examples_all_load():
    paths = example_images()
    assert len(paths) == 5
    for path in paths:
        assert load_image(path).mode == "RGB"


def test_resolutions_are_patch_multiples_around_the_training_size(tmp_path):
    tiny_run = make_tiny_run(tmp_path / "exact", "exact")
    variant = load_variant(tiny_run, "torch")
    choices = resolution_choices([variant.card])
    assert choices == [32, 48, 64, 80, 96, 112, 128]


def test_variant_prediction_matches_the_backend_runner(tmp_path):
    tiny_run = make_tiny_run(tmp_path / "nystrom", "nystrom")
    variant = load_variant(tiny_run, "auto")
    image = load_image(example_images()[1])
    x = variant.preprocess(image, 96)
    reference = eval_transform(replace(variant.card, img_size=96))(image).unsqueeze(0)
    assert x.shape == (1, 3, 96, 96) and torch.equal(x, reference)
    pred = variant.predict(x, "torch")
    logits = load_runner(tiny_run, "torch")(reference.numpy())
    assert pred.top_index == int(np.argmax(logits[0]))
    assert list(pred.labels) == [variant.card.class_names[i] for i in np.argsort(-logits[0])[:5]]
    assert abs(sum(pred.probs) - 1) < 1e-6 and pred.latency_ms > 0


def test_saliency_maps_have_the_input_size_and_follow_the_image(tiny_run, attention):
    variant = load_variant(tiny_run, "torch")
    x = variant.preprocess(load_image(example_images()[0]), 64)
    heat = gradient_x_input(variant.model, x, 3)
    assert heat.shape == (64, 64) and heat.max() > 0
    # gradient x input is zero where the input is zero
    blank = torch.zeros_like(x)
    assert gradient_x_input(variant.model, blank, 3).max() == 0
    cls = class_token_attention(variant.model, x)
    if attention == "exact":
        patches = cls[::16, ::16]  # one value per patch: the softmax row minus the class token's share
        assert cls.shape == (64, 64) and (patches > 0).all() and patches.sum() < 1
    else:
        assert cls is None
    shown = overlay(to_image(x, variant.card.mean, variant.card.std), heat)
    assert shown.shape == (256, 256, 3) and shown.dtype == np.uint8


def test_an_explicit_backend_without_its_artifact_is_refused_with_the_fix(tmp_path):
    tiny_run = make_tiny_run(tmp_path / "exact", "exact")
    with pytest.raises(BackendUnavailable, match="effvit-export"):
        load_variant(tiny_run, "onnxruntime")
    variant = load_variant(tiny_run, "auto")
    assert list(variant.runners) == ["torch"] and variant.pick_backend("auto") == "torch"
    with pytest.raises(BackendUnavailable, match="no onnxruntime model loaded"):
        variant.pick_backend("onnxruntime")
