"""Turn an uploaded file into an RGB image the models can take, or say clearly why not.

Anything Pillow opens is accepted: grayscale ("L", "1"), palette ("P", with or without
transparency), RGBA/LA, 16- and 32-bit integer ("I;16", "I"), float ("F"), CMYK, YCbCr, LAB, and
photos whose EXIF orientation tag says they are rotated (`ImageOps.exif_transpose`). Transparent
pixels are composited on white, as a viewer shows them. High-bit-depth images are rescaled to
their own range, not clipped at 255 (Pillow's plain `convert("RGB")` saturates "I;16").

The pixel limit is checked from the header, before any pixel is decoded, so a decompression
bomb (a small file that declares a huge canvas) is refused without using memory or time.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000


class InputError(ValueError):
    """An upload the demo cannot use; the message names the problem and the fix."""


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_image(path: Union[str, Path, None], max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The upload at `path` as an upright RGB image; raises InputError with the reason otherwise."""
    if path is None:
        raise InputError("No image: upload an image or pick one of the examples, then press Classify.")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"The upload {path.name!r} did not arrive: upload it again.")
    if path.stat().st_size == 0:
        raise InputError(f"The file {path.name!r} is empty (0 bytes): upload an image file (PNG, JPEG, WebP, ...).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise InputError(
                        f"The image is {width}x{height} = {width * height:,} pixels, over this demo's limit of "
                        f"{max_pixels:,}: downscale it (or start the demo with a larger --max-pixels)."
                    )
                image = ImageOps.exif_transpose(image)
                image.load()
                return _to_rgb(image)
    except InputError:
        raise
    except Image.DecompressionBombError:
        limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
        raise InputError(
            f"The image declares more pixels than it is safe to decode (over this demo's limit of {limit:,}): "
            "downscale it before uploading."
        ) from None
    except UnidentifiedImageError:
        raise InputError(
            f"{path.name!r} is not an image Pillow can read: upload a PNG, JPEG, WebP, BMP, GIF or TIFF file."
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{path.name!r} could not be decoded ({err}): the file is damaged or truncated; "
                         "upload a complete image.") from None
