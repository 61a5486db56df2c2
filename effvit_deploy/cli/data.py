"""`effvit-data`: prepare and check data sets (ImageNet-100 links, digits and cluttered digits PNGs, bad-image scan)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from ..data import ClutteredDigits, DataError, build_imagenet100, describe_folder, find_bad_images, write_digits_folder, write_folder
from ..data.decode import accepted_formats
from ..data.imagenet100 import DEFAULT_CLASS_FILE
from .errors import Parser, existing_dir, existing_file, output_dir, run_cli

EPILOG = """examples:
  effvit-data imagenet100 --imagenet /data/imagenet --out /data/imagenet100
  effvit-data check /data/imagenet100 --workers 8
  effvit-data digits --out data/digits --img-size 64
  effvit-data cluttered --out data/cluttered --img-size 128
then train on a folder with: effvit-train --config train/imagenet100_vit_s16.yaml --data /data/imagenet100
"""


def _imagenet100(args: argparse.Namespace) -> int:
    existing_dir("--imagenet", args.imagenet, "the ImageNet-1k folder with train/ and val/")
    existing_file("--classes", args.classes)
    output_dir("--out", args.out)
    result = build_imagenet100(args.imagenet, args.out, args.classes)
    for split, s in result["splits"].items():
        print(f"{split}: {result['classes']} classes, {s['images']} images "
              f"({s['min_per_class']}-{s['max_per_class']} per class)")
    links = result["links"]
    print(f"links in {args.out}: {links['created']} created, {links['kept']} kept, "
          f"{links['replaced']} replaced, {links['removed']} stale removed")
    return 0


def _check(args: argparse.Namespace) -> int:
    existing_dir("DIR", args.dir, "a folder of images")
    report = find_bad_images(args.dir, workers=args.workers, progress=sys.stderr.isatty())
    for path, reason in report.bad:
        print(f"BAD {path}: {reason}")
    for path, change in report.converted:
        print(f"CONVERTED {path}: {change}")
    for path in report.ignored:
        print(f"IGNORED {path}: not an accepted image format ({accepted_formats()}), training never reads it")
    print(f"checked {report.checked} images: {len(report.bad)} unreadable, "
          f"{report.checked - len(report.bad)} ok; {len(report.ignored)} other files ignored (IGNORED lines); "
          f"{len(report.converted)} converted on load (CONVERTED lines: what training and the demo both do)")
    summary = {"checked": report.checked, "bad": [p for p, _ in report.bad],
               "converted": dict(report.converted), "other_files": len(report.ignored), "ignored": report.ignored}
    layout_ok = True
    if (Path(args.dir) / "train").is_dir() or (Path(args.dir) / "val").is_dir():
        try:
            summary["splits"] = describe_folder(args.dir)
            for split, s in summary["splits"].items():
                print(f"{split}: {s['classes']} classes, {s['images']} images")
        except DataError as exc:
            print(f"layout: {exc}")
            summary["layout_error"], layout_ok = str(exc), False
    if args.json:
        print(json.dumps(summary))
    return 0 if layout_ok and not report.bad else 1


def _digits(args: argparse.Namespace) -> int:
    output_dir("--out", args.out)
    counts = write_digits_folder(args.out, img_size=args.img_size, seed=args.seed)
    print(f"wrote digits to {args.out}: " + ", ".join(f"{k} {v} images" for k, v in counts.items())
          + f" at {args.img_size}x{args.img_size} px")
    return 0


def _cluttered(args: argparse.Namespace) -> int:
    output_dir("--out", args.out)
    sizes = {"train": args.train_size, "val": args.val_size}
    splits = {split: ClutteredDigits(split, n, args.img_size, seed=args.seed) for split, n in sizes.items()}
    counts = write_folder(args.out, splits)
    print(f"wrote cluttered digits to {args.out}: " + ", ".join(f"{k} {v} images" for k, v in counts.items())
          + f" at {args.img_size}x{args.img_size} px")
    return 0


def _int_at_least(low: int):
    """An argparse type: an integer >= `low`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text}")
        return value

    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="effvit-data", description=__doc__, epilog=EPILOG, debug_flag=False)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("imagenet100", help="build ImageNet-100 (CMC class list) from ImageNet-1k by symlinks",
                       epilog="example: effvit-data imagenet100 --imagenet /data/imagenet --out /data/imagenet100",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--imagenet", required=True, help="ImageNet-1k folder with train/<wnid>/ and val/<wnid>/")
    s.add_argument("--out", required=True, help="output folder (gets train/ and val/ of class links)")
    s.add_argument("--classes", default=str(DEFAULT_CLASS_FILE),
                   help="class list, one WordNet ID per line (default: the bundled ImageNet-100 list, effvit_deploy/data/imagenet100_classes.txt)")
    s.set_defaults(func=_imagenet100)

    s = sub.add_parser("check", help="list unreadable or truncated images (and, for a train/val folder, check "
                       "its splits); exit 1 if anything is wrong",
                       epilog="example: effvit-data check /data/imagenet100 --workers 8")
    s.add_argument("dir", help="folder to scan recursively (symlinks followed)")
    s.add_argument("--workers", type=_non_negative_int, default=0, help="decode in this many processes (default: in-process)")
    s.add_argument("--json", action="store_true", help="also print a JSON summary line")
    s.set_defaults(func=_check)

    s = sub.add_parser("digits", help="write the bundled digits as an ImageFolder of PNGs",
                       epilog="example: effvit-data digits --out data/digits --img-size 64")
    s.add_argument("--out", required=True, help="output folder (gets train/ and val/)")
    s.add_argument("--img-size", type=_positive_int, default=64, help="image side in pixels (default: 64)")
    s.add_argument("--seed", type=int, default=0, help="split seed (default: 0, the fixed split)")
    s.set_defaults(func=_digits)

    s = sub.add_parser("cluttered", help="write cluttered digits (one digit to find among fragments) as an "
                       "ImageFolder of PNGs; the same images at any --img-size",
                       epilog="example: effvit-data cluttered --out data/cluttered --img-size 128")
    s.add_argument("--out", required=True, help="output folder (gets train/ and val/)")
    s.add_argument("--img-size", type=_positive_int, default=128, help="image side in pixels (default: 128)")
    s.add_argument("--train-size", type=_positive_int, default=1000, help="train images (default: 1000)")
    s.add_argument("--val-size", type=_positive_int, default=200, help="val images (default: 200)")
    s.add_argument("--seed", type=int, default=0, help="data seed (default: 0)")
    s.set_defaults(func=_cluttered)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(f"effvit-data {args.command}", lambda: args.func(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
