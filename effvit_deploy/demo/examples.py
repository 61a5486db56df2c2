"""Make the demo's bundled example images (effvit_deploy/assets) from data shipped in scikit-learn.

    python -m effvit_deploy.demo.examples effvit_deploy/assets

Digits: three validation-split images of the bundled digits (UCI optdigits), written as 8-bit
grayscale PNGs at 64 px exactly as `DigitsDataset.image` renders them, so a digits-trained run
sees in the demo what it saw in validation. Photos: scikit-learn's two sample photos
(`sklearn.datasets.load_sample_images`), downscaled to 320 px on the long side. Licences:
effvit_deploy/assets/README.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Union

from PIL import Image

from ..atomic import atomic_path

DIGITS = (0, 3, 7)
DIGIT_SIZE = 64
PHOTO_SIZE = 320


def write_examples(out: Union[str, Path]) -> list[Path]:
    """Write digit_{0,3,7}.png, china.jpg and flower.jpg into `out`; returns their paths."""
    from sklearn.datasets import load_sample_image

    from ..data.digits import DigitsDataset

    out = Path(out)
    written = []
    val = DigitsDataset("val", DIGIT_SIZE)
    for digit in DIGITS:
        i = next(i for i in range(len(val)) if int(val.labels[i]) == digit)
        target = out / f"digit_{digit}.png"
        with atomic_path(target) as tmp:
            val.image(i).convert("L").save(tmp, format="PNG")
        written.append(target)
    for name in ("china.jpg", "flower.jpg"):
        photo = Image.fromarray(load_sample_image(name))
        photo.thumbnail((PHOTO_SIZE, PHOTO_SIZE), Image.Resampling.LANCZOS)
        target = out / name
        with atomic_path(target) as tmp:
            photo.save(tmp, format="JPEG", quality=90)
        written.append(target)
    return written


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write the images into")
    for path in write_examples(parser.parse_args(argv).out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
