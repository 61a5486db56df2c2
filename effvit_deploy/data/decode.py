"""The one way an image file becomes model pixels: training, `effvit-data check`, calibration,
benchmark accuracy and the demo all decode through `decode_rgb`, so a model is served the same
pixels it was trained on.

Pillow's plain `convert("RGB")` gets several real files wrong, silently: a 16-bit greyscale PNG
("I;16") saturates to white, 32-bit/float TIFFs clip, EXIF orientation is ignored (a phone photo
stays sideways) and transparent pixels become whatever colour hides under them. Here:

- EXIF orientation is applied (`PIL.ImageOps.exif_transpose`), as every photo viewer does;
- 16/32-bit integer and float greyscale ("I;16*", "I", "F") are rescaled from their own
  min..max to 0..255 (12-bit data in a 16-bit container keeps its contrast);
- palette images with transparency, "LA", "PA" and "RGBA" are composited on white, as a viewer
  shows them; other modes (CMYK, YCbCr, LAB, "1", "L") go through Pillow's `convert("RGB")`.

`decode_rgb` returns the changes it made besides a plain RGB conversion, which `effvit-data
check` reports, and refuses images over `max_pixels` from the header, before decoding a pixel.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageOps

# The image formats training, `effvit-data check` and the demo accept (Pillow format name ->
# file extensions), limited to those this Pillow build can decode. ImageFolder lists files by
# IMAGE_EXTENSIONS; `decode_rgb` refuses a file whose content is another format.
_FORMATS = {
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"), "MPO": (), "PNG": (".png", ".apng"), "WEBP": (".webp",),
    "GIF": (".gif",), "BMP": (".bmp", ".dib"), "TIFF": (".tif", ".tiff"), "PPM": (".ppm", ".pgm", ".pbm", ".pnm"),
    "AVIF": (".avif",),
}
_DECODABLE = set(Image.registered_extensions().values())
IMAGE_FORMATS = tuple(name for name in _FORMATS if name in _DECODABLE or name == "MPO")
IMAGE_EXTENSIONS = tuple(ext for name in IMAGE_FORMATS for ext in _FORMATS[name])


def accepted_formats() -> str:
    """The accepted formats as a user reads them: "JPEG, PNG, WEBP, GIF, BMP, TIFF, PPM, AVIF"."""
    return ", ".join(name for name in IMAGE_FORMATS if _FORMATS[name])


def is_image_file(path: Union[str, Path]) -> bool:
    """Whether training lists this file as an image (by its extension, case-insensitive)."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


class UnsupportedFormat(ValueError):
    """The file decodes, but as a format outside IMAGE_FORMATS (e.g. an .ico renamed .png)."""


HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
EXIF_ORIENTATION = 0x0112


class TooManyPixels(ValueError):
    """The header declares more pixels than the caller allows (checked before decoding)."""

    def __init__(self, path: Union[str, Path], width: int, height: int, limit: int):
        super().__init__(f"{path}: {width}x{height} = {width * height:,} pixels, over the limit of {limit:,}")
        self.width, self.height, self.limit = width, height, limit


def to_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """An already loaded image as RGB, and the notes of what differs from `convert("RGB")`."""
    notes = []
    if image.mode in HIGH_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
        notes.append(f"high-bit-depth values {low:g}..{high:g} rescaled to 0..255")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            notes.append("transparent pixels composited on white")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB"), notes


def decode_rgb(path: Union[str, Path], max_pixels: Optional[int] = None) -> tuple[Image.Image, list[str]]:
    """(upright RGB image, notes on what was changed) for the image file at `path`.

    Raises TooManyPixels when `max_pixels` is given and exceeded (read from the header),
    UnsupportedFormat for a format outside IMAGE_FORMATS, and
    Pillow's own errors (OSError, SyntaxError, ValueError, EOFError, DecompressionBombError) for
    files it cannot decode; truncated files fail rather than decode partially.
    """
    with warnings.catch_warnings():
        if max_pixels is not None:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with open(path, "rb") as f, Image.open(f) as image:
            if image.format not in IMAGE_FORMATS:
                raise UnsupportedFormat(f"{path} is a {image.format} file; accepted formats: {accepted_formats()}")
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise TooManyPixels(path, width, height, max_pixels)
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            upright = ImageOps.exif_transpose(image)
            upright.load()
            rgb, notes = to_rgb(upright)
    if orientation not in (1, None):
        notes.insert(0, f"EXIF orientation {orientation} applied")
    return rgb, notes


def load_rgb(path: Union[str, Path]) -> Image.Image:
    """The image file at `path` as an upright RGB image (`decode_rgb` without the notes)."""
    return decode_rgb(path)[0]
