"""Turn an uploaded file into an RGB image the models can take, or say clearly why not.

Pixels come from `effvit_deploy.data.decode.decode_rgb`, the decoder training uses, so a model
sees an upload exactly as it saw its training images: anything Pillow opens (grayscale,
palette, RGBA/LA, 16/32-bit, float, CMYK, YCbCr, LAB), EXIF orientation applied, transparency
on white, high-bit-depth images rescaled rather than clipped.

The pixel limit is checked from the header, before any pixel is decoded, so a decompression
bomb (a small file that declares a huge canvas) is refused without using memory or time.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

from PIL import Image, UnidentifiedImageError

from ..data.decode import TooManyPixels, UnsupportedFormat, accepted_formats, decode_rgb

DEFAULT_MAX_PIXELS = 40_000_000


class InputError(ValueError):
    """An upload the demo cannot use; the message names the problem and the fix."""


def load_image(path: Union[str, Path, None], max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The upload at `path` as an upright RGB image; raises InputError with the reason otherwise."""
    if path is None:
        raise InputError("No image: upload an image or pick one of the examples, then press Classify.")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"The upload {path.name!r} did not arrive: upload it again.")
    if path.stat().st_size == 0:
        raise InputError(f"The file {path.name!r} is empty (0 bytes): upload an image file ({accepted_formats()}).")
    try:
        return decode_rgb(path, max_pixels)[0]
    except TooManyPixels as err:
        raise InputError(
            f"The image is {err.width}x{err.height} = {err.width * err.height:,} pixels, over this demo's limit of "
            f"{max_pixels:,}: downscale it (or start the demo with a larger --max-pixels)."
        ) from None
    except Image.DecompressionBombError:
        limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
        raise InputError(
            f"The image declares more pixels than it is safe to decode (over this demo's limit of {limit:,}): "
            "downscale it before uploading."
        ) from None
    except UnsupportedFormat as err:
        raise InputError(f"{err}: the models were trained on these formats only; convert the image.".replace(
            str(path), repr(path.name))) from None
    except UnidentifiedImageError:
        raise InputError(
            f"{path.name!r} is not an image Pillow can read: upload one of {accepted_formats()}."
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(f"{path.name!r} could not be decoded ({err}): the file is damaged or truncated; "
                         "upload a complete image.") from None
