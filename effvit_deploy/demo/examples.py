"""The demo's example images: in-distribution ones from the served runs' own validation split,
and the bundled out-of-distribution ones (effvit_deploy/assets) made from scikit-learn data.

    python -m effvit_deploy.demo.examples effvit_deploy/assets

In distribution (`validation_examples`): images of the run's validation split exactly as its
evaluation saw them (cluttered digits rendered at the run's resolution; a folder data set's own
files), the first image of each class in the validation-subset order, never chosen by what a
model answers. Out of distribution (bundled): three plain digits (UCI optdigits, 64 px) and
scikit-learn's two sample photos (`sklearn.datasets.load_sample_images`), downscaled to 320 px
on the long side. Licences: effvit_deploy/assets/README.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from PIL import Image

from ..atomic import atomic_path

DIGITS = (0, 3, 7)
DIGIT_SIZE = 64
PHOTO_SIZE = 320
EXAMPLES = 4  # in-distribution examples on the page


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


def first_of_each_class(labels: Sequence[int], order: Sequence[int], count: int) -> list[int]:
    """Up to `count` indices from `order`: the first one of each label not yet seen (never
    chosen by what a model answers)."""
    picked, seen = [], set()
    for i in order:
        if labels[i] not in seen:
            seen.add(labels[i])
            picked.append(i)
            if len(picked) == count:
                break
    return picked


def validation_examples(card: Any, out: Union[str, Path], count: int = EXAMPLES) -> list[tuple[int, str, str]]:
    """(validation index, image path, caption) of up to `count` validation images of the run
    described by `card` (a ModelCard): `first_of_each_class` in the `data.subset` order.
    Generated data sets are rendered at the card's resolution into `out` (atomically, reused when
    present); a folder data set gives its own files. [] for data without images (synthetic)."""
    from ..data.subset import validation_subset

    if not card.data:
        return []
    subset = validation_subset(card, None)
    dataset = subset.dataset
    samples, render = getattr(dataset, "samples", None), getattr(dataset, "image", None)
    if samples is None and render is None:
        return []
    classes = list(getattr(dataset, "classes", []))
    labels = [int(y) for _, y in samples] if samples is not None else [int(y) for y in dataset.labels]
    picked = []
    for i in first_of_each_class(labels, subset.indices, count):
        name = classes[labels[i]] if labels[i] < len(classes) else str(labels[i])
        if samples is not None:
            path = Path(samples[i][0])
        else:
            path = Path(out) / f"{card.data.get('name')}-val{i:05d}-{card.img_size}px-label{name}.png"
            if not path.is_file():
                with atomic_path(path) as tmp:
                    render(i).save(tmp, format="PNG")
        picked.append((i, str(path), f"validation image {i}, true label {name}"))
    return picked


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write the images into")
    for path in write_examples(parser.parse_args(argv).out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
