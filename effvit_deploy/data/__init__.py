"""Data sets for effvit-deploy: ImageFolder (ImageNet-100), the bundled digits, cluttered digits
(a small digit to find in a large image), synthetic images.

    from effvit_deploy.data import DataSpec, build_datasets, collate_skip_bad
    train, val, classes = build_datasets(DataSpec("digits"), 64, mean, std)
    loader = DataLoader(train, batch_size=64, collate_fn=collate_skip_bad)   # (x, y, n_skipped)

Preprocessing is timm's (`build_transform`); mean/std come from the caller (the model's
pretrained config), and a run's exact eval preprocessing is `eval_transform(card)`.
"""
from .cluttered import ClutteredDigits
from .datasets import build_datasets, build_eval_dataset, usable_spec
from .digits import DigitsDataset, digits_split, write_digits_folder, write_folder
from .errors import BadImageError, DataError
from .decode import IMAGE_EXTENSIONS, IMAGE_FORMATS, accepted_formats, decode_rgb, is_image_file, load_rgb
from .folder import BadImageWarning, CheckedImageFolder, collate_skip_bad, describe_folder
from .imagenet100 import build_imagenet100, read_class_list
from .check import find_bad_images
from .spec import DATASETS, GENERATED, DataSpec
from .synthetic import SyntheticDataset
from .transforms import build_transform, eval_transform

__all__ = [
    "DATASETS", "GENERATED", "IMAGE_EXTENSIONS", "IMAGE_FORMATS", "accepted_formats", "is_image_file", "BadImageError", "BadImageWarning", "CheckedImageFolder", "ClutteredDigits", "DataError", "DataSpec",
    "DigitsDataset", "SyntheticDataset", "build_datasets", "build_eval_dataset",
    "build_imagenet100", "build_transform", "collate_skip_bad", "decode_rgb", "describe_folder", "digits_split", "eval_transform",
    "find_bad_images", "load_rgb", "read_class_list", "usable_spec", "write_digits_folder", "write_folder",
]
